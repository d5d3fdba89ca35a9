"""Evaluation suites: items drawn from the held-out side of the fixed split that train/ records.

A committed *recipe* (``eval/suites/<name>.yaml``) says how many items per language, from which
sources, the share of error-free controls and of multi-turn contexts, the requested modes and
the generation settings. ``build_suite`` turns it into versioned files under
``$TUTOR_HOME/eval/suites/<name>@<version>/`` (``items.jsonl`` + ``manifest.json``), written into a
temporary folder and renamed into place. The same recipe and split give the same bytes; a
different build under an existing version is refused (bump ``version`` instead).

A recipe may grow an earlier version instead of replacing it: ``extends: 1`` says that version 1
is this recipe without its per-language ``extra_controls``. Extra controls are appended after
the earlier items, so those stay byte-identical (and their cached replies stay valid), and a
suite that names ``<name>@1`` (a check suite's ``exclude_suites``) still builds on a fresh home.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from common.data import load_split, split_dir
from common.files import atomic_dir, sha256_file
from common.metrics import target_form
from common.modes import MODES
from common.paths import tutor_home
from common.templates import tutor_reply

RECIPES = Path(__file__).resolve().parent / "suites"
DEFAULT_GENERATION = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 96}
MIN_CHARS = {"en": 12, "es": 12, "zh": 5}
# Anonymisation markers and tracked-change residue in COWS-L2H; markup anywhere.
_NOISE = re.compile(r"[*<>\[\]{}_|#]|''|\s{2,}")


class SuiteError(ValueError):
    """A recipe or a built suite is not usable; the message says why."""


@dataclass(frozen=True)
class SuiteItem:
    """One learner turn to answer, with what a good answer does with it."""

    id: str
    language: str
    utterance: str  # the learner's (last) message
    corrections: tuple[str, ...]  # gold corrections; for a control, the utterance itself
    category: str  # error category of the first edit, "none" for a control
    mode: str  # the requested scaffolding mode
    control: bool = False  # error-free: any correction is over-correction
    context: tuple[dict[str, str], ...] = ()  # earlier turns (multi-turn items)
    source: str = ""
    learner: str = ""
    record_id: str = ""
    level: str | None = None

    @property
    def correction(self) -> str:
        return next((c for c in self.corrections if c != self.utterance), self.corrections[0])

    def messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.context] + [{"role": "user", "content": self.utterance}]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["corrections"] = list(self.corrections)
        d["context"] = [dict(m) for m in self.context]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SuiteItem:
        return cls(
            **{
                **d,
                "corrections": tuple(d["corrections"]),
                "context": tuple(dict(m) for m in d.get("context", ())),
            }
        )

    def content_hash(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    version: int
    items: list[SuiteItem]
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def generation(self) -> dict[str, Any]:
        return {**DEFAULT_GENERATION, **self.manifest.get("generation", {})}


# -- recipes ---------------------------------------------------------------------------------------


def load_recipe(path: Path | str) -> dict[str, Any]:
    """A suite recipe from YAML, checked; relative names resolve in ``eval/suites/``."""
    p = Path(path)
    if not p.exists() and (RECIPES / f"{p.name}.yaml").exists():
        p = RECIPES / f"{p.name}.yaml"
    if not p.exists():
        raise SuiteError(f"no suite recipe {path!s} (looked in {RECIPES})")
    recipe = yaml.safe_load(p.read_text(encoding="utf-8"))
    for key in ("name", "version", "seed", "languages"):
        if key not in recipe:
            raise SuiteError(f"{p}: recipe needs {key!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", str(recipe["name"])):
        raise SuiteError(f"{p}: suite names are lower-case letters, digits, '-' and '_'")
    modes = recipe.get("modes", list(MODES))
    if not modes or set(modes) - set(MODES):
        raise SuiteError(f"{p}: modes must be among {', '.join(MODES)}")
    if not 0 <= float(recipe.get("controls", 0.2)) < 1:
        raise SuiteError(f"{p}: controls is a share in [0, 1)")
    if "extends" in recipe and not 0 < int(recipe["extends"]) < int(recipe["version"]):
        raise SuiteError(f"{p}: extends names an earlier version than {recipe['version']}")
    return recipe


def earlier_version(recipe: dict[str, Any], version: int) -> dict[str, Any]:
    """The recipe of ``version``: this one, or the version it ``extends`` (itself without the
    extra controls). Other versions are not reconstructible from the committed file."""
    if version == int(recipe["version"]):
        return recipe
    if version != int(recipe.get("extends", 0)):
        raise SuiteError(
            f"{recipe['name']}@{version}: the recipe builds version {recipe['version']}"
            + (f" and {recipe['extends']}" if "extends" in recipe else "")
            + " only"
        )
    older = {k: v for k, v in recipe.items() if k != "extends"}
    older["version"] = version
    older["languages"] = {
        lang: {k: v for k, v in spec.items() if k != "extra_controls"}
        for lang, spec in recipe["languages"].items()
    }
    return older


def suites_dir(home: Path | str | None = None) -> Path:

    return tutor_home(home) / "eval" / "suites"


# -- building --------------------------------------------------------------------------------------


def _usable(text: str, language: str, max_chars: int) -> bool:
    return MIN_CHARS.get(language, 1) <= len(text) <= max_chars and not _NOISE.search(text)


def _interleaved_modes(n: int, modes: list[str], rng: random.Random) -> list[str]:
    """Every run of len(modes) items has each mode once, in a seeded order."""
    out: list[str] = []
    while len(out) < n:
        block = list(modes)
        rng.shuffle(block)
        out += block
    return out[:n]


def _context(prev: Any, language: str, key: str) -> tuple[dict[str, str], ...]:
    """An earlier exchange: the learner's previous sentence and a template tutor recast of it
    (train/'s offline generator), so the model answers the last turn of a real conversation."""

    reply = tutor_reply("recast", prev.utterance, prev.correction, language, prev.category, key)
    return ({"role": "user", "content": prev.utterance}, {"role": "assistant", "content": reply})


def _pool(spec: dict[str, Any], language: str, home: Path | None, exclude: set[str]) -> list[Any]:

    records = []
    for source in spec.get("sources", []):
        for r in load_split(source, "eval", home=home):
            if r.language != language:
                continue
            if spec.get("learner") and r.learner != spec["learner"]:
                continue
            records.append(r)
    max_chars = int(spec.get("max_chars", 160))
    return sorted(
        (
            r
            for r in records
            if r.changed
            and (r.category or "other") not in exclude
            and _usable(r.utterance, language, max_chars)
            and _usable(r.correction, language, max_chars)
            and target_form(r.utterance, r.correction)
        ),
        key=lambda r: r.id,
    )


def excluded_records(
    recipe: dict[str, Any], *, home: Path | None = None, split_home: Path | None = None
) -> tuple[set[str], dict[str, str]]:
    """The record ids of the suites a recipe's ``exclude_suites`` names (``name@version``), and
    each suite's items hash. A check suite leaves out every sentence the suites that chose a
    version asked, so it measures that version on sentences nothing in the project saw."""
    ids: set[str] = set()
    hashes: dict[str, str] = {}
    for ref in recipe.get("exclude_suites", []):
        if "@" not in str(ref):
            raise SuiteError(f"exclude_suites: {ref!r} needs a version (name@version)")
        name, _, version = str(ref).partition("@")
        try:
            suite = load_suite(ref, home=home, split_home=split_home)  # built if missing
        except SuiteError as exc:
            raise SuiteError(f"exclude_suites: cannot load {ref}: {exc}") from exc
        ids |= {it.record_id for it in suite.items}
        hashes[suite.ref] = suite.manifest["items_sha256"]
    return ids, hashes


def build_items(
    recipe: dict[str, Any], *, home: Path | None = None, excluded: frozenset[str] = frozenset()
) -> list[SuiteItem]:
    """The suite's items, a pure function of the recipe, the split and the ``excluded`` records."""
    seed, name = recipe["seed"], recipe["name"]
    modes = list(recipe.get("modes", MODES))
    controls = float(recipe.get("controls", 0.2))
    multi_turn = float(recipe.get("multi_turn", 0.3))
    exclude = set(recipe.get("exclude_categories", []))
    items: list[SuiteItem] = []
    for language, spec in recipe["languages"].items():
        rng = random.Random(f"{seed}:{name}:{language}")
        pool = [r for r in _pool(spec, language, home, exclude) if r.id not in excluded]
        rng.shuffle(pool)
        n = int(spec["items"])
        n_ctl = round(n * controls)
        n_err = n - n_ctl
        if len(pool) < n + 1:
            raise SuiteError(f"{language}: {len(pool)} usable held-out records, {n} wanted")
        chosen, spare = pool[:n], pool[n:]
        # COWS-L2H ids (essay id + sentence) repeat across the essays one student wrote for
        # different prompts: the previous sentence is looked up with the prompt, and such items
        # get a hash of their text in their id.
        by_id = {(r.id, r.meta.get("prompt")): r for r in pool}
        seen: dict[str, int] = {}
        for r in pool:
            seen[r.id] = seen.get(r.id, 0) + 1
        err_modes = _interleaved_modes(n_err, modes, rng)
        ctl_modes = _interleaved_modes(n_ctl, modes, rng)
        multi = set(rng.sample(range(n), round(n * multi_turn)))
        spare_iter = iter(spare)
        for i, rec in enumerate(chosen):
            control = i >= n_err
            rid = rec.id
            if seen[rec.id] > 1:
                rid += "~" + hashlib.sha256(rec.utterance.encode()).hexdigest()[:6]
            context: tuple[dict[str, str], ...] = ()
            if i in multi:
                prev = None
                m = re.fullmatch(r"(cowsl2h-.+)-(\d+)", rec.id)
                if m:  # the previous sentence of the same essay, when it is usable
                    prev = by_id.get(
                        (f"{m.group(1)}-{int(m.group(2)) - 1}", rec.meta.get("prompt"))
                    )
                prev = prev or next(spare_iter, None)
                if prev is not None:
                    context = _context(prev, language, f"{name}:{rec.id}")
            if control:
                text = rec.correction  # a gold correction is an error-free learner sentence
                item = SuiteItem(
                    id=f"{rid}:ctl",
                    language=language,
                    utterance=text,
                    corrections=(text,),
                    category="none",
                    mode=ctl_modes[i - n_err],
                    control=True,
                    context=context,
                    source=rec.source,
                    learner=rec.learner,
                    record_id=rec.id,
                    level=spec.get("level"),
                )
            else:
                item = SuiteItem(
                    id=rid,
                    language=language,
                    utterance=rec.utterance,
                    corrections=tuple(rec.corrections),
                    category=rec.category or "other",
                    mode=err_modes[i],
                    control=False,
                    context=context,
                    source=rec.source,
                    learner=rec.learner,
                    record_id=rec.id,
                    level=spec.get("level"),
                )
            items.append(item)
        items += _extra_controls(
            [it for it in items if it.language == language and not it.control],
            int(spec.get("extra_controls", 0)),
            modes,
            random.Random(f"{seed}:{name}:{language}:extra"),
        )
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise SuiteError("duplicate item ids: a record was drawn twice")
    return items


def _extra_controls(
    errors: list[SuiteItem], n: int, modes: list[str], rng: random.Random
) -> list[SuiteItem]:
    """``n`` single-turn controls: the gold corrections of ``n`` of the suite's own error items.

    The held-out pool is small (88 usable MuCGEC records), and a suite with 6 controls lets one
    reply decide the over-correction gate. A gold correction is an error-free sentence a learner
    of that level wrote (once corrected); the cost is that it is the twin of an error item the
    same model also answers, in a separate request. Their own seeded stream, so the earlier
    items do not move."""
    if n > len(errors):
        raise SuiteError(f"extra_controls: {n} wanted, {len(errors)} error items to draw from")
    picked = sorted(rng.sample(range(len(errors)), n))
    ctl_modes = _interleaved_modes(n, modes, rng)
    return [
        replace(
            errors[i],
            id=f"{errors[i].id}:ctl",
            utterance=errors[i].correction,
            corrections=(errors[i].correction,),
            category="none",
            mode=mode,
            control=True,
            context=(),
        )
        for i, mode in zip(picked, ctl_modes, strict=True)
    ]


def _counts(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _dump_items(items: list[SuiteItem]) -> str:
    return "".join(
        json.dumps(it.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for it in items
    )


def build_suite(
    recipe_path: Path | str,
    *,
    home: Path | str | None = None,
    split_home: Path | str | None = None,
    version: int | None = None,
) -> Suite:
    """Build (or find, when already built identically) ``<name>@<version>`` from a recipe.

    ``split_home`` is where the fixed split lives (default: ``home``); suites go to ``home``.
    ``version``: the recipe's own (default) or the one it ``extends``.
    """

    recipe = load_recipe(recipe_path)
    if version is not None:
        recipe = earlier_version(recipe, int(version))
    home_p = Path(home).expanduser() if home else None
    split_home_p = Path(split_home).expanduser() if split_home else home_p
    excluded, excluded_hashes = excluded_records(recipe, home=home_p, split_home=split_home_p)
    items = build_items(recipe, home=split_home_p, excluded=frozenset(excluded))
    text = _dump_items(items)
    split_manifest = split_dir(split_home_p) / "manifest.json"
    manifest = {
        "name": recipe["name"],
        "version": int(recipe["version"]),
        "seed": recipe["seed"],
        "recipe": recipe,
        "generation": {**DEFAULT_GENERATION, **recipe.get("generation", {})},
        "split": {
            "dir": str(split_manifest.parent),
            "manifest_sha256": sha256_file(split_manifest) if split_manifest.exists() else None,
        },
        "items_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "excluded_suites": excluded_hashes,
        "counts": {
            "items": len(items),
            "controls": sum(it.control for it in items),
            "multi_turn": sum(bool(it.context) for it in items),
            "by_language": _counts([it.language for it in items]),
            "by_mode": _counts([it.mode for it in items]),
            "by_category": _counts([it.category for it in items]),
            "by_source": _counts([it.source for it in items]),
        },
        "licences": "items quote JFLEG (CC BY-NC-SA 4.0), COWS-L2H and MuCGEC (Apache-2.0): "
        "see ../shared/data",
    }
    dest = suites_dir(home_p) / f"{recipe['name']}@{int(recipe['version'])}"
    if dest.exists():
        existing = json.loads((dest / "manifest.json").read_text())
        if existing.get("items_sha256") != manifest["items_sha256"]:
            raise SuiteError(
                f"{dest.name} already exists with other items: bump the recipe's version"
            )
        return load_suite(dest.name, home=home_p)
    try:
        with atomic_dir(dest, replace=False) as tmp:  # the folder appears whole or not at all
            (tmp / "items.jsonl").write_text(text, encoding="utf-8")
            (tmp / "manifest.json").write_text(
                json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                encoding="utf-8",
            )
    except FileExistsError:
        pass  # another process wrote the same suite meanwhile: read theirs
    return load_suite(dest.name, home=home_p)


def built_versions(name: str, home: Path | str | None = None) -> list[int]:
    root = suites_dir(home)
    found = []
    for p in root.glob(f"{name}@*"):
        tail = p.name.rpartition("@")[2]
        if tail.isdigit() and (p / "manifest.json").exists():
            found.append(int(tail))
    return sorted(found)


def load_suite(
    ref: str | Path, *, home: Path | str | None = None, split_home: Path | str | None = None
) -> Suite:
    """A built suite by ``name@version``, ``name`` or a folder.

    A bare ``name`` with a committed recipe in eval/suites/ is that recipe's version (built when
    missing), so a home that built an older version moves on when the recipe does; without
    one, the latest built version. A missing version the committed recipe can build is built
    (from the split in ``split_home``, default ``home``)."""
    p = Path(ref)
    if p.is_dir() and (p / "manifest.json").exists():
        folder = p
    else:
        name, _, version = str(ref).partition("@")
        committed = (RECIPES / f"{name}.yaml").exists()
        if not version and committed:
            version = str(load_recipe(name)["version"])
        if not version:
            versions = built_versions(name, home)
            if not versions:
                raise SuiteError(f"no built suite {name} under {suites_dir(home)}")
            version = str(versions[-1])
        folder = suites_dir(home) / f"{name}@{version}"
        if not (folder / "manifest.json").exists():
            if committed and version.isdigit():
                return build_suite(name, home=home, split_home=split_home, version=int(version))
            raise SuiteError(f"no built suite {name}@{version} under {suites_dir(home)}")
    manifest = json.loads((folder / "manifest.json").read_text())
    text = (folder / "items.jsonl").read_text(encoding="utf-8")
    if hashlib.sha256(text.encode()).hexdigest() != manifest["items_sha256"]:
        raise SuiteError(f"{folder}: items.jsonl does not match its manifest")
    items = [SuiteItem.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]
    return Suite(manifest["name"], int(manifest["version"]), items, manifest, folder)
