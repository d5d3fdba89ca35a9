"""The registry in a real PostgreSQL (``postgres_server``/``pg_url`` in conftest.py): what only a
shared registry has. Several gateways writing at once, seeing each other's promotions, the
migration from SQLite, and the settings that pick the backend. The operations themselves run on
both backends in tests/adapters/test_registry.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import Registry, RegistryError
from adapters.registry_migrate import migrate
from common.paths import REPO
from common.settings import Settings
from server.adapter_manager import AdapterManager
from server.engines.base import Engine, GenerationRequest, TextDelta
from server.metrics import Metrics
from tests.support import TUTOR


@pytest.fixture
def root(tmp_path: Path, tiny_adapters: dict[str, Path]) -> Path:
    """An adapter root holding copies of the two tiny adapters (es, zh)."""
    runs = tmp_path / "runs"
    for key, src in tiny_adapters.items():
        shutil.copytree(src, runs / key)
    return runs


@pytest.fixture
def open_registry(tmp_path: Path, root: Path) -> Iterator[Any]:
    """Opens registries on one store, like gateways on shared storage; closes them after."""
    opened: list[Registry] = []

    def _open(location: str | Path) -> Registry:
        opened.append(Registry(location, store=tmp_path / "store", roots=[root]))
        return opened[-1]

    yield _open
    for reg in opened:
        reg.close()


def _add(reg: Registry, root: Path, tiny_path: Path, variant: str = "tutor", **kw: Any) -> str:
    return reg.add(root / "es", variant=variant, base_model=str(tiny_path), max_rank=16, **kw).name


# -- settings and the backend choice --------------------------------------------------------------


def test_settings_keep_a_url_a_string_and_a_path_a_path(monkeypatch, tmp_path):
    url = "postgresql://tutor:secret@db.internal:5432/tutor?sslmode=require"
    monkeypatch.setenv("TUTOR_REGISTRY", url)
    s = Settings()
    assert s.registry == url and s.registry_url == url and s.registry_location == url
    with pytest.raises(ValueError, match="no file"):
        s.registry_path  # noqa: B018 - a wrong path would start a second, empty registry
    assert Settings(registry="postgres://h/db").registry_url == "postgres://h/db"
    monkeypatch.setenv("TUTOR_REGISTRY", str(tmp_path / "r.sqlite"))
    s = Settings()
    assert s.registry == tmp_path / "r.sqlite" and s.registry_url is None
    assert s.registry_path == s.registry_location == tmp_path / "r.sqlite"
    monkeypatch.delenv("TUTOR_REGISTRY")
    s = Settings(home=tmp_path)
    assert s.registry_location == tmp_path / "registry.sqlite"


def test_a_sqlite_registry_never_imports_psycopg(tmp_path):
    code = (
        "import sys; from pathlib import Path; from adapters.registry import Registry; "
        "from common.settings import Settings; "
        f"r = Registry.from_settings(Settings(home=Path({str(tmp_path)!r}))); r.list(); "
        "assert not any(m.startswith('psycopg') for m in sys.modules), sorted(sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TUTOR_REGISTRY"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path, postgres_server):
    with pytest.raises(RegistryError, match="cannot use the PostgreSQL registry") as err:
        Registry("postgresql://tutor:s3cret@127.0.0.1:1/x", store=tmp_path, roots=[])
    assert "s3cret" not in str(err.value) and "tutor:***@" in str(err.value)
    with pytest.raises(RegistryError, match='database "nope" does not exist'):
        Registry(postgres_server.rsplit("/", 1)[0] + "/nope", store=tmp_path, roots=[])


def test_a_postgres_registry_has_no_file(tmp_path, pg_url):
    with (
        Registry(pg_url, store=tmp_path, roots=[]) as reg,
        pytest.raises(RegistryError, match="has no database file"),
    ):
        reg.db_path  # noqa: B018 - the property raises


# -- several gateways on one database -------------------------------------------------------------


def test_concurrent_adds_from_two_gateways_get_distinct_numbers(
    open_registry, pg_url, root, tiny_path
):
    gateways = [open_registry(pg_url), open_registry(pg_url)]  # two pools, two connections
    start = threading.Barrier(2)
    names: list[str] = []
    errors: list[BaseException] = []

    def adder(reg: Registry) -> None:
        start.wait()
        for _ in range(4):
            try:
                names.append(_add(reg, root, tiny_path))
            except BaseException as exc:  # noqa: BLE001 - reported by the assert below
                errors.append(exc)

    threads = [threading.Thread(target=adder, args=(g,)) for g in gateways]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(names, key=lambda n: int(n.split("@")[1])) == [f"tutor@{i}" for i in range(1, 9)]
    assert [v.name for v in gateways[1].list("tutor")] == [f"tutor@{i}" for i in range(1, 9)]
    assert all((gateways[0].store / n / "adapter_config.json").is_file() for n in names)


def test_a_promotion_is_seen_by_another_gateway_within_a_second(
    open_registry, pg_url, root, tiny_path
):
    a, b = open_registry(pg_url), open_registry(pg_url)
    v1, v2 = _add(a, root, tiny_path), _add(a, root, tiny_path)
    a.promote("tutor", v1)
    seen = b.data_version()
    assert b.data_version() == seen and a.data_version() == seen  # one counter, reads keep it
    b.list(), b.aliases(), b.history("tutor")
    with pytest.raises(RegistryError):
        a.promote("tutor", "tutor@99")  # a failed write commits nothing
    assert b.data_version() == seen
    a.promote("tutor", v2)
    deadline = time.monotonic() + 1.0
    while b.data_version() == seen:
        assert time.monotonic() < deadline, "the promotion was not seen within a second"
        time.sleep(0.02)
    assert b.aliases() == {"tutor": v2} and b.history("tutor") == [v1, v2]
    assert b.data_version()[0] == seen[0]  # the same database: the epoch stays


class _Engine(Engine):
    """Just enough engine for the adapter manager: loads are recorded, nothing generates."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def health(self) -> dict[str, Any]:
        return {}

    async def load_adapter(self, adapter: Any) -> bool:
        self.loaded.append(adapter.name)
        return True


def test_a_gateway_follows_a_promotion_made_by_another(open_registry, pg_url, root, tiny_path):
    cli, gateway = open_registry(pg_url), open_registry(pg_url)
    v1, v2 = _add(cli, root, tiny_path), _add(cli, root, tiny_path)
    cli.promote("tutor", v1)

    async def scenario() -> None:
        engine = _Engine()
        manager = AdapterManager(
            engine,
            gateway,
            base_model=str(tiny_path),
            max_resident=4,
            metrics=Metrics(),
            poll_interval=0.1,
        )
        await manager.start()
        try:
            assert manager.current("tutor").name == v1
            await asyncio.to_thread(cli.promote, "tutor", v2)
            deadline = time.monotonic() + 2.0
            while manager.current("tutor").name != v2:
                assert time.monotonic() < deadline, "the watcher did not pick up the promotion"
                await asyncio.sleep(0.05)
            assert engine.loaded == [v1, v2]  # the new version loaded before the switch
        finally:
            await manager.aclose()

    asyncio.run(scenario())


# -- migration from SQLite ------------------------------------------------------------------------


def _sqlite_registry_with_history(reg: Registry, root: Path, tiny_path: Path) -> None:
    """Two variants, lineage, sources, an eval summary, and interleaved promotions/rollbacks."""
    t1 = _add(reg, root, tiny_path, source={"run": "r1", "step": 50})
    t2 = _add(reg, root, tiny_path, parent=t1)
    t3 = _add(reg, root, tiny_path, eval_summary={"pedagogy": 0.5})
    e1 = _add(reg, root, tiny_path, variant="tutor-es-l2")
    e2 = _add(reg, root, tiny_path, variant="tutor-es-l2")
    reg.set_eval_summary(t2, {"pedagogy": 0.7})
    for variant, name in [("tutor", t1), ("tutor-es-l2", e2), ("tutor", t3), ("tutor", t2)]:
        reg.promote(variant, name)
    reg.rollback("tutor")  # back to t3
    reg.promote("tutor-es-l2", e1)
    reg.promote("tutor", t1)


def _state(reg: Registry) -> tuple:
    return (
        [v.to_dict() for v in reg.list()],
        reg.aliases(),
        {v: reg.history(v) for v in ("tutor", "tutor-es-l2")},
    )


def test_migrate_copies_everything_and_keeps_the_history_order(
    open_registry, tmp_path, pg_url, root, tiny_path
):
    old = open_registry(tmp_path / "old.sqlite")
    _sqlite_registry_with_history(old, root, tiny_path)
    done = migrate(old.db_path, pg_url)
    assert (done.versions, done.aliases, done.history, done.already_there) == (5, 2, 5, False)
    assert done.missing_files == []
    new = open_registry(pg_url)
    assert _state(new) == _state(old)
    assert new.history("tutor") == ["tutor@1", "tutor@3", "tutor@1"]
    assert new.get("tutor@2").eval_summary == {"pedagogy": 0.7}
    # the stack behaves the same afterwards: rollback pops what SQLite would have popped
    assert new.rollback("tutor") == old.rollback("tutor") == ("tutor@1", "tutor@3")
    assert (
        new.rollback("tutor-es-l2")
        == old.rollback("tutor-es-l2")
        == ("tutor-es-l2@1", "tutor-es-l2@2")
    )
    assert _state(new) == _state(old)
    assert _add(new, root, tiny_path) == "tutor@4"  # numbering goes on where SQLite's stopped


def test_migrate_twice_is_a_no_op_and_a_different_target_is_refused(
    open_registry, tmp_path, pg_url, root, tiny_path
):
    old = open_registry(tmp_path / "old.sqlite")
    _sqlite_registry_with_history(old, root, tiny_path)
    migrate(old.db_path, pg_url)
    new = open_registry(pg_url)
    before = _state(new)
    again = migrate(old.db_path, pg_url)
    assert again.already_there and (again.versions, again.aliases, again.history) == (5, 2, 5)
    assert _state(new) == before
    new.promote("tutor", "tutor@2")  # the target moves on: the copy is no longer identical
    with pytest.raises(RegistryError, match="already holds 5 versions, 2 aliases and 6 history"):
        migrate(old.db_path, pg_url)
    assert _state(new) != _state(old) and new.alias("tutor") == "tutor@2"  # left alone
    with pytest.raises(RegistryError, match="no SQLite registry"):
        migrate(tmp_path / "missing.sqlite", pg_url)


def test_migrate_is_one_transaction(open_registry, tmp_path, pg_url, root, tiny_path):
    """A row the target refuses half-way (an alias naming no version) leaves it empty."""
    import sqlite3

    old = open_registry(tmp_path / "old.sqlite")
    _sqlite_registry_with_history(old, root, tiny_path)
    db = sqlite3.connect(old.db_path)
    with db:
        db.execute("INSERT INTO aliases VALUES ('ghost', 'ghost@1', 0)")  # SQLite lets it in
    db.close()
    with pytest.raises(RegistryError, match="rolled back: .*foreign key"):
        migrate(old.db_path, pg_url)
    new = open_registry(pg_url)
    assert new.list() == [] and new.aliases() == {} and new.history("tutor") == []


def test_migrate_registry_command(tmp_path, pg_url, root, tiny_path, open_registry):
    old = open_registry(tmp_path / "old.sqlite")
    _sqlite_registry_with_history(old, root, tiny_path)
    env = {
        **os.environ,
        "TUTOR_REGISTRY": pg_url,
        "TUTOR_ADAPTER_DIR": str(tmp_path / "store"),
    }

    def tutor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([TUTOR, "adapters", *args], env=env, capture_output=True, text=True)

    url = pg_url.replace("postgres@", "postgres:pw-9f3a@")  # trust auth ignores it; output hides it
    done = tutor("migrate-registry", "--from", str(old.db_path), "--to", url)
    assert done.returncode == 0, done.stderr
    assert "copied 5 versions, 2 aliases, 5 history entries" in done.stdout
    assert "pw-9f3a" not in done.stdout and "postgres:***@" in done.stdout
    listing = tutor("list")  # TUTOR_REGISTRY is the URL: the CLI now reads PostgreSQL
    assert listing.returncode == 0, listing.stderr
    rows = [line.split()[:2] for line in listing.stdout.splitlines()]
    assert ["*", "tutor@1"] in rows and ["*", "tutor-es-l2@1"] in rows and len(rows) == 5
    shown = json.loads(tutor("show", "tutor@1").stdout)
    assert shown["source"] == {"run": "r1", "step": 50}
    again = tutor("migrate-registry", "--from", str(old.db_path))  # --to from TUTOR_REGISTRY
    assert again.returncode == 0 and "nothing copied" in again.stdout, again.stderr
    assert tutor("promote", "tutor", "tutor@2").returncode == 0
    refused = tutor("migrate-registry", "--from", str(old.db_path))
    assert refused.returncode == 2 and "error: the PostgreSQL registry already holds" in (
        refused.stderr
    )


def test_connections_dropped_by_the_server_cost_no_failed_call(open_registry, pg_url):
    """A database restart or failover closes every connection; the pool checks each one it
    hands out, so the next call reconnects instead of failing."""
    import psycopg

    reg = open_registry(pg_url)
    seen = reg.data_version()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert killed >= 1
    assert reg.data_version() == seen and reg.aliases() == {}


def test_a_schema_of_its_own_through_the_url(open_registry, pg_url):
    """What docs/OPERATIONS.md suggests: ?options=-csearch_path%3D<schema>."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA tutor")
    reg = open_registry(pg_url + "?options=-csearch_path%3Dtutor")
    assert reg.aliases() == {}
    with psycopg.connect(pg_url, autocommit=True) as admin:
        tables = admin.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name = 'versions'"
        ).fetchall()
    assert tables == [("tutor", "versions")]
