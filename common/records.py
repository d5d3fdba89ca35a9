"""The one record type every learner-error source becomes: ErrorRecord.

Separate from the loaders and the split because everything downstream (dialogue generation,
synthetic errors, eval suites) needs the type without the corpora or the split files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorRecord:
    """One learner utterance with its gold corrections: what dialogues and eval items start from."""

    id: str
    source: str
    language: str
    learner: str  # "l2", "heritage" or "general"
    utterance: str
    corrections: tuple[str, ...]
    l1: str | None = None
    category: str | None = None
    group: str = ""  # records of one group (an essay) stay on one side of the split
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(c != self.utterance for c in self.corrections)

    @property
    def correction(self) -> str:
        """The first correction that differs from the utterance (the one dialogues target)."""
        return next((c for c in self.corrections if c != self.utterance), self.corrections[0])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["corrections"] = list(self.corrections)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ErrorRecord:
        return cls(**{**d, "corrections": tuple(d["corrections"])})
