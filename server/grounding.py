"""Grounded recast: correct first, then tutor with the correction in view.

A 135M tutor that must find the learner's error and talk about it in the same breath mostly
echoes the error back (docs/TRAINING.md: uptake 0.33 with one adapter doing both). Split the
work: the variant's adapter is first asked, as a corrector, for the corrected sentence (greedy,
one line), and the tutor turn then gets a hidden system note right after the learner's message:
"The learner meant: ..." or "The learner's sentence is correct." Both roles are trained into the
same adapter (train/ renders these same messages), so by default one LoRA slot serves both and a
promotion swaps both at once; a variant's `corrector:` in the catalogue names another model (an
alias or a version) to correct with instead, held loaded for the corrector turn. The note is
never shown to the learner and never comes back in the history.

Where the language has a word list (the catalogue's `spelling:`), the corrector is given the
sentence after a spelling pass (server/spelling.py): the 135M corrector misses most misspellings.
Where the engine ranks next tokens, the base model picks each word's spelling in context; else
the most frequent near word is taken. The outcome is still judged against what the learner
wrote.

A correction that rewrites too much of the sentence is not trusted: the tutor then answers
without a note, as the ungrounded variant would.

When the corrector leaves the sentence as it is, the requested scaffolding move (elicit, hint,
...) is taken out of the tutor turn's system prompt: a move is a way to treat an error, and a
learner who asked for elicitation and wrote a correct sentence should get a reply, not a prompt
to fix what is right. The Mandarin adapters elicited on correct sentences with the move in the
prompt even after the note said "correct" (docs/TRAINING.md); the trained data has the note
without a move for half of its error-free turns, so this is an input the adapters know.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from adapters.variants import Variant
from server.engines.base import AdapterRef, Engine, GenerationRequest, SamplingParams, TextDelta
from server.errors import EngineError, EngineUnavailable
from server.spelling import fix_spelling, fix_spelling_in_context

log = logging.getLogger(__name__)

MIN_SIMILARITY = 0.6  # token overlap below this: the "correction" is another sentence
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Grounding:
    """What the corrector said and what the tutor was told."""

    correction: str | None  # None: nothing usable came back
    outcome: str  # changed | unchanged | rejected | no_user_turn
    note: str | None
    tokens: int = 0  # the corrector turn's prompt + completion: the key pays for them too


def _tokens(text: str) -> list[str]:
    return [t.casefold() for t in _TOKEN.findall(text)]


def plausible(utterance: str, correction: str) -> bool:
    """A correction edits the learner's sentence; it does not replace it."""
    if not correction.strip():
        return False
    a, b = _tokens(utterance), _tokens(correction)
    return SequenceMatcher(None, a, b, autojunk=False).ratio() >= MIN_SIMILARITY


def corrector_max_tokens(utterance: str) -> int:
    """Room for the sentence plus a few inserted words (CJK takes ~3 tokens a character)."""
    return min(256, 16 + 3 * len(utterance))


def last_user_turn(messages: list[dict[str, str]]) -> str | None:
    if messages and messages[-1]["role"] == "user":
        return messages[-1]["content"]
    return None


@dataclass(frozen=True)
class Corrector:
    """Where the corrector turn runs: an adapter version (or an upstream model) of its own."""

    adapter: AdapterRef | None
    upstream_model: str | None = None


async def correct(
    engine: Engine,
    request: GenerationRequest,
    variant: Variant,
    text: str,
    corrector: Corrector | None = None,
) -> tuple[str, int]:
    """The corrector's one line, and the tokens it took: through the tutor turn's own adapter
    version unless the catalogue names another model as the variant's corrector."""
    where = corrector or Corrector(request.adapter, request.upstream_model)
    ask = GenerationRequest(
        messages=variant.corrector_messages(text),
        params=SamplingParams(max_tokens=corrector_max_tokens(text), temperature=0.0, stop=("\n",)),
        adapter=where.adapter,
        upstream_model=where.upstream_model,
        headers=request.headers,
        stream=False,  # collected, never shown: one body, not a stream of events
    )
    try:
        return await _collect(engine.generate(ask))
    except EngineUnavailable:
        # The corrector's line is collected, never shown: one cut mid-way (a vLLM replica that
        # died) costs nothing to ask again, and the replica set sends the retry elsewhere.
        return await _collect(engine.generate(ask))


async def _collect(deltas: AsyncIterator[TextDelta]) -> tuple[str, int]:
    """The turn's text, and its tokens (the engine's usage; else one per delta with text)."""
    parts, counted, used = [], 0, None
    async for delta in deltas:
        parts.append(delta.text)
        counted += bool(delta.text)
        if delta.finish_reason is not None and delta.completion_tokens is not None:
            used = (delta.prompt_tokens or 0) + delta.completion_tokens
    return "".join(parts).strip(), counted if used is None else used


async def spell(engine: Engine, text: str, language: str, *, in_context: bool) -> str:
    """The spelling pass: in context where asked and the engine ranks next tokens, else by
    frequency (a word list lookup can take a few hundred ms: off the event loop). An engine that
    fails to rank costs the learner nothing: the pass goes by frequency then."""
    if in_context and engine.ranks_next_tokens:
        try:
            return await fix_spelling_in_context(text, language, engine.next_tokens)
        except EngineError as exc:
            log.warning("spelling in context failed (%s): by frequency instead", exc)
    return await asyncio.to_thread(fix_spelling, text, language)


async def ground(
    engine: Engine,
    request: GenerationRequest,
    variant: Variant,
    corrector: Corrector | None = None,
    *,
    in_context: bool = True,
) -> tuple[GenerationRequest, Grounding]:
    """The tutor request with the hidden note after the learner's last turn, and what happened.
    ``in_context``: the spelling pass may ask the engine's base model (``spell``)."""
    text = last_user_turn(request.messages)
    if text is None:
        return request, Grounding(None, "no_user_turn", None)
    if variant.spelling:
        seen = await spell(engine, text, variant.spelling, in_context=in_context)
    else:
        seen = text
    correction, tokens = await correct(engine, request, variant, seen, corrector)
    if not plausible(text, correction):
        return request, Grounding(correction, "rejected", None, tokens)
    note = variant.grounding_note(text, correction)
    outcome = "unchanged" if correction == text.strip() else "changed"
    messages = list(request.messages)
    if outcome == "unchanged":  # nothing to scaffold: no move hint
        messages = variant.without_move_hint(messages)
    messages = [*messages, {"role": "system", "content": note}]
    return replace(request, messages=messages), Grounding(correction, outcome, note, tokens)
