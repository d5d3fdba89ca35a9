"""An optional LLM judge over any OpenAI-compatible endpoint, on MRBench's dimensions.

MRBench (Maurya et al., NAACL 2025; CC BY-SA 4.0, in ``../shared/data/mrbench``) labels tutor
replies to student mistakes on *Mistake identification*, *Providing guidance*, *Actionability*
(Yes / To some extent / No) and *Tutor tone* (Encouraging / Neutral / Offensive). Its dialogues
are maths, not language, which is why it serves to *calibrate* the judge: before a judge's
scores of our replies are shown as trusted, ``calibrate`` measures its agreement with the human
labels (accuracy and Cohen's kappa per dimension, against the majority-label baseline) and
records it. A judge below :data:`MIN_KAPPA` on any dimension, or that cannot follow the answer
format, is reported as not trusted.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.paths import data_dir, tutor_home
from eval.cache import ReplyCache, cache_key
from eval.runner import api_base, resolve_model
from eval.stats import accuracy, cohen_kappa

DIMENSIONS = ("Mistake_Identification", "Providing_Guidance", "Actionability", "Tutor_Tone")
VALUES = {
    "Mistake_Identification": ("Yes", "To some extent", "No"),
    "Providing_Guidance": ("Yes", "To some extent", "No"),
    "Actionability": ("Yes", "To some extent", "No"),
    "Tutor_Tone": ("Encouraging", "Neutral", "Offensive"),
}
SCORE = {"Yes": 1.0, "To some extent": 0.5, "No": 0.0}
SCORE_TONE = {"Encouraging": 1.0, "Neutral": 0.5, "Offensive": 0.0}
UNPARSED = "(unparsed)"
MIN_KAPPA = 0.4  # "moderate" agreement (Landis and Koch) on every dimension
MIN_PARSED = 0.9
MAX_HISTORY_CHARS = 1800
DEFAULT_MRBENCH = "MRBench_V2.json"  # V2 has all four dimensions, tone included

SYSTEM = """You assess one tutor reply to a student. Answer with exactly these four lines and \
nothing else:
Mistake_Identification: Yes | To some extent | No
Providing_Guidance: Yes | To some extent | No
Actionability: Yes | To some extent | No
Tutor_Tone: Encouraging | Neutral | Offensive

Mistake_Identification: does the reply recognise the student's mistake?
Providing_Guidance: does it offer correct, relevant guidance (a hint, an explanation, an example)?
Actionability: is it clear what the student should do next?
Tutor_Tone: is the reply encouraging, neutral or offensive?"""


def judge_messages(history: str, response: str, note: str = "") -> list[dict[str, str]]:
    history = history.strip()
    if len(history) > MAX_HISTORY_CHARS:
        history = "..." + history[-MAX_HISTORY_CHARS:]
    user = f"Conversation so far:\n{history}\n\n"
    if note:
        user += f"{note}\n\n"
    user += f"Tutor reply to assess:\n{response.strip()}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_judgement(text: str) -> dict[str, str | None]:
    """The four labels from a judge's answer; ``None`` for a dimension it did not answer."""
    out: dict[str, str | None] = {}
    for dim in DIMENSIONS:
        name = dim.replace("_", r"[\s_]*")
        options = "|".join(re.escape(v) for v in VALUES[dim])
        m = re.search(rf"{name}\W*?[:=\-]\s*\**\s*({options})\b", text, re.I)
        if m is None:
            out[dim] = None
            continue
        said = m.group(1).casefold()
        out[dim] = next(v for v in VALUES[dim] if v.casefold() == said)
    return out


def label_score(dim: str, label: str | None) -> float | None:
    if label is None:
        return None
    return (SCORE_TONE if dim == "Tutor_Tone" else SCORE)[label]


# -- MRBench ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledReply:
    id: str
    history: str
    response: str
    labels: dict[str, str]


def load_mrbench(path: Path, n: int | None = None, seed: int = 20250601) -> list[LabelledReply]:
    """MRBench replies with all four labels, a seeded sample of ``n`` of them."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    for conv in data:
        responses = conv.get("anno_llm_responses") or conv.get("tutor_responses") or {}
        for tutor, r in sorted(responses.items()):
            ann = r.get("annotation") or {}
            if not all(ann.get(d) in VALUES[d] for d in DIMENSIONS):
                continue
            rows.append(
                LabelledReply(
                    id=f"{conv['conversation_id']}:{tutor}",
                    history=conv["conversation_history"],
                    response=r["response"],
                    labels={d: ann[d] for d in DIMENSIONS},
                )
            )
    rows.sort(key=lambda r: r.id)
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows


def default_mrbench_path() -> Path:

    return data_dir() / "mrbench" / DEFAULT_MRBENCH


# -- asking the judge ------------------------------------------------------------------------------


@dataclass
class Judge:
    """A judge model behind an OpenAI-compatible endpoint, its answers cached."""

    base_url: str
    model: str
    cache: ReplyCache
    api_key: str = "unused"
    concurrency: int = 4
    max_tokens: int = 60
    progress: bool = True

    async def ask_all(self, prompts: Sequence[tuple[str, list[dict[str, str]]]]) -> list[str]:
        """The judge's raw answer to each (id, messages), temperature 0, fixed seed."""
        from openai import AsyncOpenAI
        from tqdm import tqdm

        client = AsyncOpenAI(base_url=api_base(self.base_url), api_key=self.api_key, max_retries=3)
        try:
            card = await client.models.retrieve(self.model)
            model_key = resolve_model(card.model_dump(), self.model).key
            sem = asyncio.Semaphore(max(1, self.concurrency))
            bar = tqdm(total=len(prompts), desc=f"judge {self.model}", disable=not self.progress)
            params = {"temperature": 0.0, "max_tokens": self.max_tokens, "seed": 0}

            async def one(pid: str, messages: list[dict[str, str]]) -> str:
                blob = json.dumps(messages, ensure_ascii=False, sort_keys=True)
                key = cache_key("judge", model_key, pid, blob, params)
                hit = self.cache.get(key)
                if hit is not None:
                    bar.update(1)
                    return str(hit["reply"])
                async with sem:
                    r = await client.chat.completions.create(
                        model=self.model, messages=messages, **params
                    )
                text = r.choices[0].message.content or ""
                self.cache.put(
                    key,
                    model_key=model_key,
                    item_id=pid,
                    reply=text,
                    finish_reason=r.choices[0].finish_reason,
                    adapter=None,
                    latency_s=None,
                )
                bar.update(1)
                return text

            try:
                return list(await asyncio.gather(*(one(pid, m) for pid, m in prompts)))
            finally:
                bar.close()
        finally:
            await client.close()


def agreement(truth: Sequence[dict[str, str]], said: Sequence[dict[str, str | None]]) -> dict:
    """Per dimension: accuracy, Cohen's kappa, the majority baseline and the parse rate. An
    unparsed answer counts as a disagreement (its own label for kappa)."""
    out: dict[str, Any] = {}
    for dim in DIMENSIONS:
        t = [x[dim] for x in truth]
        p = [y.get(dim) or UNPARSED for y in said]
        majority = Counter(t).most_common(1)[0][0] if t else None
        out[dim] = {
            "n": len(t),
            "accuracy": accuracy(t, p),
            "kappa": cohen_kappa(t, p),
            "majority_label": majority,
            "majority_accuracy": accuracy(t, [majority] * len(t)) if t else 0.0,
            "parsed": sum(v != UNPARSED for v in p) / len(p) if p else 0.0,
            "confusion": {
                f"{a} -> {b}": c for (a, b), c in sorted(Counter(zip(t, p, strict=True)).items())
            },
        }
    return out


async def calibrate(
    judge: Judge, mrbench: Path, *, n: int = 100, seed: int = 20250601
) -> dict[str, Any]:
    """Ask the judge about ``n`` MRBench replies and measure its agreement with the labels."""
    rows = load_mrbench(mrbench, n, seed)
    prompts = [(f"mrbench:{r.id}", judge_messages(r.history, r.response)) for r in rows]
    answers = await judge.ask_all(prompts)
    said = [parse_judgement(a) for a in answers]
    dims = agreement([r.labels for r in rows], said)
    trusted = all(d["kappa"] >= MIN_KAPPA and d["parsed"] >= MIN_PARSED for d in dims.values())
    return {
        "judge": judge.model,
        "base_url": judge.base_url,
        "mrbench": str(mrbench),
        "licence": "MRBench: CC BY-SA 4.0",
        "n": len(rows),
        "seed": seed,
        "dimensions": dims,
        "min_kappa": MIN_KAPPA,
        "min_parsed": MIN_PARSED,
        "trusted": trusted,
        "answers": [
            {"id": r.id, "labels": r.labels, "answer": a, "parsed": s}
            for r, a, s in zip(rows, answers, said, strict=True)
        ],
    }


def calibration_path(model: str, home: Path | str | None = None) -> Path:

    slug = re.sub(r"[^A-Za-z0-9@._-]+", "_", model)
    return tutor_home(home) / "eval" / "judge" / f"{slug}.calibration.json"


def calibration_markdown(cal: dict[str, Any]) -> str:
    lines = [
        f"Judge `{cal['judge']}` on {cal['n']} MRBench replies (seed {cal['seed']}): "
        + ("**trusted**" if cal["trusted"] else "**not trusted**")
        + f" (needs kappa >= {cal['min_kappa']} and parsed >= {cal['min_parsed']} everywhere).",
        "",
        "| dimension | accuracy | Cohen's kappa | majority baseline | parsed |",
        "|---|---:|---:|---:|---:|",
    ]
    for dim, d in cal["dimensions"].items():
        lines.append(
            f"| {dim} | {d['accuracy']:.2f} | {d['kappa']:.2f} | "
            f"{d['majority_accuracy']:.2f} ({d['majority_label']}) | {d['parsed']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# -- judging a run ---------------------------------------------------------------------------------


def _note(item: Any) -> str:
    lang = {"en": "English", "es": "Spanish", "zh": "Mandarin"}.get(item.language, item.language)
    if item.control:
        return f"The student is learning {lang}. Their last message has no language mistake."
    return (
        f"The student is learning {lang}. Their last message has a language mistake; a corrected "
        f"version is: {item.correction}"
    )


async def judge_run(run: Any, judge: Judge, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Judge every reply of a run; mean score per model and dimension (Yes = 1, To some extent
    = 0.5, No = 0; Encouraging = 1, Neutral = 0.5, Offensive = 0), unparsed answers left out."""
    prompts, where = [], []
    for model in run.models:
        for item in run.suite.items:
            rec = run.replies[model][item.id]
            history = "\n".join(
                f"{'Student' if m['role'] == 'user' else 'Tutor'}: {m['content']}"
                for m in item.messages()
            )
            prompts.append(
                (
                    f"{rec['model_key']}:{item.id}",
                    judge_messages(history, rec["reply"], _note(item)),
                )
            )
            where.append(model)
    answers = await judge.ask_all(prompts)
    sums: dict[str, dict[str, list[float]]] = {m: {d: [] for d in DIMENSIONS} for m in run.models}
    parsed = 0
    for model, answer in zip(where, answers, strict=True):
        labels = parse_judgement(answer)
        parsed += all(v is not None for v in labels.values())
        for dim, label in labels.items():
            s = label_score(dim, label)
            if s is not None:
                sums[model][dim].append(s)
    return {
        "model": judge.model,
        "calibration": {
            "trusted": bool(calibration and calibration.get("trusted")),
            "kappa": {d: v["kappa"] for d, v in (calibration or {}).get("dimensions", {}).items()},
        },
        "dimensions": list(DIMENSIONS),
        "parsed": parsed / len(answers) if answers else 0.0,
        "scores": {
            m: {d: (sum(v) / len(v) if v else None) for d, v in dims.items()}
            for m, dims in sums.items()
        },
    }
