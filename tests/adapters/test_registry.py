"""The adapter registry: versions, lineage, aliases, roots, and consistency under kill -9.

Every test here runs on both backends, SQLite and a real PostgreSQL (``registry`` is
parametrised); what only PostgreSQL has (several gateways at once, migration) is in
tests/adapters/test_registry_pg.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.registry import Registry, RegistryError, VersionNotFound
from adapters.validation import AdapterValidationError
from tests.support import kill_9_after


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path, root: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        location: Path | str = tmp_path / "reg" / "registry.sqlite"
    else:
        location = request.getfixturevalue("pg_url")
    reg = Registry(location, store=tmp_path / "store", roots=[root])
    yield reg
    reg.close()


@pytest.fixture
def adapters_in_root(root: Path, tiny_adapters: dict[str, Path]) -> dict[str, Path]:
    import shutil

    return {k: Path(shutil.copytree(v, root / v.name)) for k, v in tiny_adapters.items()}


def test_add_names_versions_copies_and_records_lineage(registry, adapters_in_root, tiny_path):
    base = str(tiny_path)
    v1 = registry.add(
        adapters_in_root["es"],
        variant="tutor",
        base_model=base,
        max_rank=16,
        source={"run": "r1", "step": 50},
    )
    v2 = registry.add(
        adapters_in_root["zh"], variant="tutor-es-l2", base_model=base, max_rank=16, parent=v1.name
    )
    v3 = registry.add(adapters_in_root["es"], variant="tutor", base_model=base, max_rank=16)
    assert (v1.name, v2.name, v3.name) == ("tutor@1", "tutor-es-l2@1", "tutor@2")
    assert v1.path.parent == registry.store and (v1.path / "adapter_model.safetensors").is_file()
    assert v1.sha256 == v3.sha256 and v1.rank == 8 and "q_proj" in v1.target_modules
    got = registry.get("tutor-es-l2@1")
    assert got.parent == "tutor@1" and got.source is None
    assert registry.get("tutor@1").source == {"run": "r1", "step": 50}
    assert [v.name for v in registry.list("tutor")] == ["tutor@1", "tutor@2"]
    registry.set_eval_summary("tutor@2", {"pedagogy": 0.7})
    assert registry.get("tutor@2").eval_summary == {"pedagogy": 0.7}
    with pytest.raises(VersionNotFound):
        registry.add(
            adapters_in_root["es"], variant="tutor", base_model=base, max_rank=16, parent="tutor@99"
        )


def test_paths_outside_the_roots_are_refused(registry, tiny_adapters, root, tiny_path):
    base = str(tiny_path)
    with pytest.raises(RegistryError, match="outside the adapter roots"):
        registry.add(tiny_adapters["es"], variant="tutor", base_model=base, max_rank=16)
    with pytest.raises(RegistryError, match="outside the adapter roots"):
        registry.add(
            root / ".." / ".." / tiny_adapters["es"].name,
            variant="tutor",
            base_model=base,
            max_rank=16,
        )
    (root / "link").symlink_to(tiny_adapters["es"])  # a symlink cannot smuggle a path in
    with pytest.raises(RegistryError, match="outside the adapter roots"):
        registry.add(root / "link", variant="tutor", base_model=base, max_rank=16)
    assert registry.list() == []


def test_invalid_adapters_are_refused_before_recording(registry, adapters_in_root, tiny_path):
    with pytest.raises(AdapterValidationError, match="max rank 4"):
        registry.add(adapters_in_root["es"], variant="tutor", base_model=str(tiny_path), max_rank=4)
    with pytest.raises(AdapterValidationError, match="served base model"):
        registry.add(
            adapters_in_root["es"], variant="tutor", base_model="Qwen/Qwen3-8B-Base", max_rank=16
        )
    assert registry.list() == [] and list(registry.store.iterdir()) == []


def test_promote_rollback_and_remove(registry, adapters_in_root, tiny_path):
    add = lambda: registry.add(  # noqa: E731
        adapters_in_root["es"], variant="tutor", base_model=str(tiny_path), max_rank=16
    )
    a, b, c = add(), add(), add()
    assert registry.promote("tutor", a.name) == (None, a.name)
    assert registry.promote("tutor", b.name) == (a.name, b.name)
    assert registry.promote("tutor", b.name) == (b.name, b.name)  # idempotent
    assert registry.promote("tutor", c.name) == (b.name, c.name)
    assert registry.rollback("tutor") == (c.name, b.name)
    assert registry.rollback("tutor") == (b.name, a.name)
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("tutor")
    assert registry.alias("tutor") == a.name
    with pytest.raises(RegistryError, match="belongs to tutor"):
        registry.promote("tutor-es-l2", a.name)
    with pytest.raises(RegistryError, match="is live"):
        registry.remove(a.name)
    registry.remove(c.name)
    assert not c.path.exists()
    with pytest.raises(VersionNotFound):
        registry.get(c.name)


CHURN = """
import sys
from pathlib import Path
from adapters.registry import Registry
reg = Registry(sys.argv[1], store=Path(sys.argv[2]), roots=[])  # a file or a URL
names = sys.argv[3:]
print("ready", flush=True)
i = 0
while True:
    reg.promote("tutor", names[i % len(names)])
    if i % 3 == 2:
        reg.rollback("tutor")
    i += 1
"""


def test_state_survives_kill_9_in_the_middle_of_promotions(registry, adapters_in_root, tiny_path):
    names = [
        registry.add(
            adapters_in_root["es"], variant="tutor", base_model=str(tiny_path), max_rank=16
        ).name
        for _ in range(3)
    ]
    for round_ in range(4):
        kill_9_after(
            CHURN, str(registry.location), str(registry.store), *names, after=0.3 + 0.17 * round_
        )
        if isinstance(registry.location, Path):  # PostgreSQL has no file to check
            db = sqlite3.connect(registry.db_path)
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            db.close()
        current = registry.alias("tutor")
        history = registry.history("tutor")
        assert current in names
        assert history and history[-1] == current  # the alias and its history agree
        assert all(a != b for a, b in zip(history, history[1:], strict=False))
        # the killed writer's lock went with it: this write goes through
        assert registry.promote("tutor", current) == (current, current)


def test_add_once_records_a_folder_once_even_when_two_add_it_together(
    registry, adapters_in_root, tiny_path, tmp_path
):
    """Two gateways starting together each register the shipped adapters: the weights check is
    inside the write transaction, so the second finds the first's version instead of adding
    @2 (with the check outside it, both saw none and both added)."""
    import threading

    other = Registry(registry.location, store=registry.store, roots=registry.roots)
    barrier = threading.Barrier(2)
    got: list[tuple[str, bool]] = []

    def add(reg: Registry) -> None:
        barrier.wait()
        version, added = reg.add_once(
            adapters_in_root["es"], variant="tutor", base_model=str(tiny_path), max_rank=16
        )
        got.append((version.name, added))

    threads = [threading.Thread(target=add, args=(r,)) for r in (registry, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert sorted(got) == [("tutor@1", False), ("tutor@1", True)]
    assert [v.name for v in registry.list("tutor")] == ["tutor@1"]
    # other weights are a new version; the same weights again are the old one
    v2, added = registry.add_once(
        adapters_in_root["zh"], variant="tutor", base_model=str(tiny_path), max_rank=16
    )
    assert (v2.name, added) == ("tutor@2", True)
    again, added = registry.add_once(
        adapters_in_root["es"], variant="tutor", base_model=str(tiny_path), max_rank=16
    )
    assert (again.name, added) == ("tutor@1", False)
