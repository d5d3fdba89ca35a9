"""Who writes the tutor's turns: the offline template generator and a teacher LLM over HTTP.

Both take a DialogueContext (the persona, the conversation so far and the Turn to make) and
return the reply's text. Separate from the dialogue assembly because this is the only part that
calls a model: the teacher's bounded concurrency, retries and backoff live here, and the openai
SDK is imported inside TeacherGenerator only.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass

from common.templates import NATURAL_ECHO_SHARE, tutor_reply

LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "zh": "Mandarin Chinese"}


@dataclass(frozen=True)
class Turn:
    """What one assistant turn has to do: the gates check each against its own target."""

    mode: str  # one of MODES, or "confirm" (praise a self-repair, using the corrected form)
    utterance: str
    correction: str
    category: str | None = None


@dataclass
class DialogueContext:
    """Everything a generator needs to write the next assistant turn."""

    key: str
    language: str
    system: str
    history: list[dict[str, str]]  # the conversation so far, ending with the learner's turn
    turn: Turn
    natural_echo: float = NATURAL_ECHO_SHARE  # share of error-free turns answered with an echo


class TemplateGenerator:
    """Offline and deterministic."""

    name = "template"

    async def reply(self, ctx: DialogueContext) -> str:
        t = ctx.turn
        return tutor_reply(
            t.mode,
            t.utterance,
            t.correction,
            ctx.language,
            t.category,
            ctx.key,
            natural_echo=ctx.natural_echo,
        )


MODE_INSTRUCTIONS = {
    "recast": "Recast: answer naturally, using the corrected form inside your reply, without "
    "pointing at the error.",
    "expansion": "Expansion: use the corrected form and add a little more language around it "
    "(a richer word, a longer phrase) the learner can borrow.",
    "elicitation": "Elicitation: do NOT give the correct form. Repeat the learner's sentence up "
    "to the error and let them finish it, or ask how they would say it another way.",
    "metalinguistic": "Metalinguistic hint: give a short clue about the rule (for example 'think "
    "about the time') WITHOUT giving the corrected form.",
    "natural": "The learner's sentence is correct: answer its content naturally, change none of "
    "their words, and do not correct or comment on the language.",
    "confirm": "The learner corrected themselves: confirm warmly using the corrected sentence, "
    "then continue the conversation.",
}


class TeacherGenerator:
    """A teacher model behind any OpenAI-compatible endpoint, with bounded concurrency and
    retries with exponential backoff and jitter."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "none",
        concurrency: int = 4,
        retries: int = 4,
        backoff: float = 0.5,
        timeout: float = 120.0,
        temperature: float = 0.7,
        max_tokens: int = 160,
    ) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout
        )
        self.model = model
        self.name = f"teacher:{model}"
        self.semaphore = asyncio.Semaphore(concurrency)
        self.retries, self.backoff = retries, backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.calls = 0
        self.failures = 0

    def messages(self, ctx: DialogueContext) -> list[dict[str, str]]:
        t = ctx.turn
        lang = LANGUAGE_NAMES[ctx.language]
        brief = (
            f"You write the tutor's next reply in a {lang} conversation with a language learner."
            f"\nThe tutor's persona:\n{ctx.system}\n\nMove for this reply: "
            f"{MODE_INSTRUCTIONS[t.mode]}\nNever say that something is wrong or a mistake. "
            f"Write only the tutor's words, in {lang}, at most three short sentences, and end "
            "with a short question that keeps the conversation going."
        )
        convo = "\n".join(f"{m['role']}: {m['content']}" for m in ctx.history)
        ask = (
            f"Conversation so far:\n{convo}\n\nThe learner's last sentence: {t.utterance}\n"
            f"A corrected version (for you only): {t.correction}\n\nThe tutor's reply:"
        )
        return [{"role": "system", "content": brief}, {"role": "user", "content": ask}]

    async def reply(self, ctx: DialogueContext) -> str:
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        delay = self.backoff
        async with self.semaphore:
            for attempt in range(self.retries + 1):
                self.calls += 1
                try:
                    out = await self.client.chat.completions.create(
                        model=self.model,
                        messages=self.messages(ctx),
                        temperature=self.temperature,
                        max_tokens=self.max_tokens,
                        seed=int(hashlib.sha256(ctx.key.encode()).hexdigest()[:6], 16),
                    )
                    return (out.choices[0].message.content or "").strip()
                except (APIConnectionError, APITimeoutError, APIStatusError) as exc:
                    retryable = not isinstance(exc, APIStatusError) or exc.status_code in (
                        408,
                        409,
                        429,
                        500,
                        502,
                        503,
                        504,
                    )
                    self.failures += 1
                    if not retryable or attempt == self.retries:
                        raise
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay *= 2
        raise AssertionError("unreachable")
