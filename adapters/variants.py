"""The variant catalogue: which public model ids exist and how each one tutors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.modes import LEVELS, SCAFFOLDING

GROUNDING_KEYS = ("corrector", "meant", "correct")
ROLES = ("tutor", "corrector")


class CatalogueError(ValueError):
    """The catalogue file is malformed; raised at start-up, never per request."""


@dataclass(frozen=True)
class Variant:
    id: str
    language: str
    learner: str
    description: str
    persona: str
    adapter: Path | None  # pinned by TUTOR_ADAPTERS: served as is, the registry's alias ignored
    shipped: Path | None = None  # the catalogue's trained default, registered on start
    defaults: Mapping[str, Any] = field(default_factory=dict)
    scaffolding_hints: Mapping[str, str] = field(default_factory=dict)
    level_hints: Mapping[str, str] = field(default_factory=dict)
    grounding: Mapping[str, str] = field(default_factory=dict)  # corrector / meant / correct
    grounded: bool = False  # serve with a grounded recast by default (a request may override)
    corrector: str | None = None  # who writes the correction: a model id; None: this variant
    spelling: str | None = None  # a spelling pass before the corrector turn (server/spelling.py)
    role: str = "tutor"  # tutor | corrector: a model other variants name as their `corrector:`
    name: str = ""  # what a chat client shows (/v1/models); the id when the catalogue has none

    def corrector_messages(self, utterance: str) -> list[dict[str, str]]:
        """The corrector's turn: the variant's own adapter, asked for the corrected sentence.
        train/ renders the same messages, so the adapter learns both roles."""
        return [
            {"role": "system", "content": self.grounding["corrector"]},
            {"role": "user", "content": utterance},
        ]

    def grounding_note(self, utterance: str, correction: str) -> str:
        """The hidden system note that follows the learner's turn: what the learner meant, or
        that the sentence is already right (which is what keeps error-free turns uncorrected)."""
        if correction.strip() == utterance.strip():
            return self.grounding["correct"]
        return self.grounding["meant"].format(correction=correction.strip())

    def without_move_hint(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The messages with the scaffolding hints taken out of the leading system prompt
        (``system_prompt`` joins persona, level, move and client text as paragraphs). The
        gateway does this when the corrector finds nothing to correct (server/grounding.py), and
        train/ renders the same prompt for a job that trains on it."""
        if not messages or messages[0]["role"] != "system":
            return messages
        hints = {h.strip() for h in self.scaffolding_hints.values()}
        paragraphs = messages[0]["content"].split("\n\n")
        kept = [p for p in paragraphs if p.strip() not in hints]
        if len(kept) == len(paragraphs):
            return messages
        return [{**messages[0], "content": "\n\n".join(kept)}, *messages[1:]]

    def system_prompt(
        self, scaffolding: str | None = None, level: str | None = None, client: str = ""
    ) -> str:
        """Persona, then the requested adjustments, then the client's own system message."""
        parts = [self.persona.strip()]
        if level:
            parts.append(self.level_hints[level])
        if scaffolding:
            parts.append(self.scaffolding_hints[scaffolding])
        if client.strip():
            parts.append(client.strip())
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Catalogue:
    variants: Mapping[str, Variant]

    @classmethod
    def load(cls, path: Path, adapter_overrides: Mapping[str, str] | None = None) -> Catalogue:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise CatalogueError(f"cannot read catalogue {path}: {exc}") from exc
        return cls.from_dict(raw, base_dir=Path(path).parent, overrides=adapter_overrides or {})

    @classmethod
    def from_dict(cls, raw: Any, *, base_dir: Path, overrides: Mapping[str, str]) -> Catalogue:
        if not isinstance(raw, dict) or not isinstance(raw.get("variants"), dict):
            raise CatalogueError("catalogue needs a 'variants' mapping")
        languages = raw.get("languages") or {}
        unknown = set(overrides) - set(raw["variants"])
        if unknown:
            raise CatalogueError(f"adapter overrides name unknown variants: {sorted(unknown)}")
        variants = {}
        for vid, spec in raw["variants"].items():
            lang = spec.get("language")
            hints = languages.get(lang) or {}
            scaffolding = hints.get("scaffolding") or {}
            levels = hints.get("level") or {}
            missing = [m for m in SCAFFOLDING if m not in scaffolding]
            missing += [lv for lv in LEVELS if lv not in levels]
            if missing:
                raise CatalogueError(f"language {lang!r} of {vid} lacks hints for {missing}")
            grounding = hints.get("grounding") or {}
            lacking = [k for k in GROUNDING_KEYS if k not in grounding]
            if lacking:
                raise CatalogueError(f"language {lang!r} of {vid} lacks grounding {lacking}")
            if not spec.get("persona"):
                raise CatalogueError(f"variant {vid} has no persona")
            role = spec.get("role", "tutor")
            if role not in ROLES:
                raise CatalogueError(f"variant {vid}: role {role!r} is not one of {ROLES}")
            adapter = overrides.get(vid)
            shipped = spec.get("adapter")
            variants[vid] = Variant(
                id=vid,
                language=lang,
                learner=spec.get("learner", "general"),
                description=spec.get("description", ""),
                persona=spec["persona"],
                adapter=(base_dir / adapter).resolve() if adapter else None,
                shipped=(base_dir / shipped).resolve() if shipped else None,
                defaults=dict(spec.get("defaults") or {}),
                scaffolding_hints=scaffolding,
                level_hints=levels,
                grounding=grounding,
                grounded=bool(spec.get("grounded", False)),
                corrector=spec.get("corrector"),
                spelling=hints.get("spelling"),
                role=role,
                name=spec.get("name") or vid,
            )
        return cls(variants)
