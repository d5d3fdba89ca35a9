"""Shipped adapters: written as bf16 folders with a manifest, registered once on start with their
lineage, aliases pointed at them, and a user's later promotion never undone by a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import yaml
from safetensors import safe_open

from adapters.registry import Registry
from adapters.shipped import MANIFEST, register_shipped, ship
from adapters.variants import Catalogue
from common.settings import DEFAULT_CATALOGUE, Settings
from server.app import create_app
from tests.support import make_random_adapter, running_server

BASE_ID = "tiny-qwen3"


@pytest.fixture
def shipped_catalogue(tmp_path: Path, tiny_path: Path) -> Path:
    """A catalogue whose `tutor` and `tutor-es-l2` ship trained-looking adapters (random LoRAs
    registered in a trainer's registry with lineage, then shipped with `ship`)."""
    trainer = Registry(tmp_path / "trainer.sqlite", store=tmp_path / "store", roots=[tmp_path])
    a = make_random_adapter(tiny_path, tmp_path / "runs" / "s1", seed=11)
    b = make_random_adapter(tiny_path, tmp_path / "runs" / "s2", seed=12)
    s1 = trainer.add(
        a, variant="tutor", base_model=str(tiny_path), max_rank=16, source={"run": "s1"}
    )
    s2 = trainer.add(
        b,
        variant="tutor-es-l2",
        base_model=str(tiny_path),
        max_rank=16,
        parent=s1.name,
        source={"run": "s2", "data_manifest_sha256": "abc"},
        eval_summary={"language_ok": 1.0},
    )
    folder = tmp_path / "catalogue"
    folder.mkdir()
    ship(trainer, s1.name, folder / "shipped" / "tutor", base_id=BASE_ID, shipped_version=1)
    ship(trainer, s2.name, folder / "shipped" / "tutor-es-l2", base_id=BASE_ID, shipped_version=1)
    raw = yaml.safe_load(DEFAULT_CATALOGUE.read_text(encoding="utf-8"))
    for variant in raw["variants"].values():
        variant["adapter"] = None  # only the two shipped here; the rest run on the base
    raw["variants"]["tutor"]["adapter"] = "shipped/tutor"
    raw["variants"]["tutor-es-l2"]["adapter"] = "shipped/tutor-es-l2"
    (folder / "catalogue.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    return folder / "catalogue.yaml"


def _register(catalogue: Path, registry: Registry, tiny_path: Path):
    return register_shipped(
        registry,
        Catalogue.load(catalogue),
        base_model=str(tiny_path),
        base_aliases=(BASE_ID,),
        max_rank=16,
    )


def test_a_shipped_folder_is_bf16_with_a_portable_config_and_a_manifest(
    shipped_catalogue: Path,
) -> None:
    folder = shipped_catalogue.parent / "shipped" / "tutor-es-l2"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["variant"] == "tutor-es-l2" and manifest["version"] == 1
    assert manifest["parent_variant"] == "tutor" and manifest["parent_sha256"]
    assert manifest["data_manifest_sha256"] == "abc"
    assert manifest["eval"] == {"language_ok": 1.0}
    assert manifest["dtype"] == "bfloat16" and manifest["size_mb"] <= 10
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_ID  # no trainer's path
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    assert dtypes == {"torch.bfloat16"}
    parent = json.loads((shipped_catalogue.parent / "shipped" / "tutor" / MANIFEST).read_text())
    assert manifest["parent_sha256"] == parent["sha256"]


def test_registration_is_idempotent_keeps_lineage_and_respects_promotions(
    shipped_catalogue: Path, tiny_path: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "r.sqlite", store=tmp_path / "rstore", roots=[tmp_path])
    first = {r.variant: r for r in _register(shipped_catalogue, registry, tiny_path)}
    assert {v: (r.version, r.outcome, r.alias) for v, r in first.items()} == {
        "tutor": ("tutor@1", "added", "tutor@1"),
        "tutor-es-l2": ("tutor-es-l2@1", "added", "tutor-es-l2@1"),
    }
    assert registry.get("tutor-es-l2@1").parent == "tutor@1"
    assert registry.get("tutor@1").source["shipped"] is True

    again = _register(shipped_catalogue, registry, tiny_path)
    assert {r.outcome for r in again} == {"existing"}
    assert sorted(v.name for v in registry.list()) == ["tutor-es-l2@1", "tutor@1"]

    # The user trains and promotes their own version: a restart keeps it.
    mine = make_random_adapter(tiny_path, tmp_path / "mine", seed=13)
    own = registry.add(mine, variant="tutor", base_model=str(tiny_path), max_rank=16)
    registry.promote("tutor", own.name)
    after = {r.variant: r for r in _register(shipped_catalogue, registry, tiny_path)}
    assert after["tutor"].alias == own.name and not after["tutor"].alias_moved
    assert registry.alias("tutor") == own.name
    assert len(registry.list("tutor")) == 2


def test_select_asks_what_was_trained_not_the_shipped_set_registered_after_it(
    shipped_catalogue: Path, tiny_path: Path, tmp_path: Path
) -> None:
    """`make adapters` on a fresh home: training registers tutor@1, then `tutor eval select`
    starts a gateway, which registers the shipped folder as tutor@2. Select must ask tutor@1."""
    from eval.select import candidate_of

    registry = Registry(tmp_path / "r.sqlite", store=tmp_path / "rstore", roots=[tmp_path])
    trained = make_random_adapter(tiny_path, tmp_path / "trained", seed=21)
    own = registry.add(
        trained, variant="tutor", base_model=str(tiny_path), max_rank=16, source={"run": "s1"}
    )
    regs = {r.variant: r for r in _register(shipped_catalogue, registry, tiny_path)}
    assert regs["tutor"].version == "tutor@2" and registry.list("tutor")[-1].name == "tutor@2"
    assert candidate_of(registry, "tutor") == own.name
    # with nothing trained, the shipped version is what there is to ask
    assert candidate_of(registry, "tutor-es-l2") == regs["tutor-es-l2"].version


def test_a_new_shipped_set_replaces_an_old_shipped_alias_only(
    shipped_catalogue: Path, tiny_path: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "r.sqlite", store=tmp_path / "rstore", roots=[tmp_path])
    _register(shipped_catalogue, registry, tiny_path)
    # A release ships new weights for tutor: the alias follows the shipped line.
    trainer = Registry(tmp_path / "t2.sqlite", store=tmp_path / "t2store", roots=[tmp_path])
    new = trainer.add(
        make_random_adapter(tiny_path, tmp_path / "runs" / "s3", seed=14),
        variant="tutor",
        base_model=str(tiny_path),
        max_rank=16,
    )
    target = shipped_catalogue.parent / "shipped" / "tutor"
    ship(trainer, new.name, target, base_id=BASE_ID, shipped_version=2)
    out = {r.variant: r for r in _register(shipped_catalogue, registry, tiny_path)}
    assert out["tutor"].version == "tutor@2" and out["tutor"].alias_moved
    assert registry.alias("tutor") == "tutor@2"


def test_an_adapter_for_another_base_is_skipped_not_fatal(
    shipped_catalogue: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "r.sqlite", store=tmp_path / "rstore", roots=[tmp_path])
    out = register_shipped(
        registry,
        Catalogue.load(shipped_catalogue),
        base_model="Qwen/Qwen3-8B-Base",
        max_rank=16,
    )
    assert all(r.version is None and r.outcome.startswith("skipped") for r in out)
    assert registry.list() == []


def test_a_gateway_serves_the_shipped_versions_and_a_restart_changes_nothing(
    shipped_catalogue: Path, tutor_home: Path, tiny_path: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    settings = Settings(
        home=tutor_home,
        model=BASE_ID,
        engine="transformers",
        catalogue=shipped_catalogue,
        registry=home / "registry.sqlite",
        adapter_dir=home / "adapters",
    )
    body = {
        "model": "tutor",
        "messages": [{"role": "user", "content": "Yesterday I go to the store."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    for _start in range(2):
        with running_server(create_app(settings)) as url:
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.headers["x-tutor-adapter"] == "tutor@1"
            models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
            assert models["tutor"]["metadata"]["adapter"] == "tutor@1"
            assert models["tutor-es-l2"]["metadata"]["adapter"] == "tutor-es-l2@1"
            assert models["tutor-zh-l2"]["metadata"]["adapter"] == "base"
    registry = Registry.from_settings(settings)
    assert [v.name for v in registry.list("tutor")] == ["tutor@1"]
    shutil.rmtree(home)


def test_a_version_for_another_base_is_never_served(tutor_home: Path, tmp_path: Path) -> None:
    """One registry, two bases: the repository's shipped SmolLM2 `tutor` registered by a SmolLM2
    gateway, then a gateway on the tiny model with the same registry. The alias is not followed
    (the tiny gateway answers `tutor` on its base) and asking for the version by name is a 422,
    never an engine crash from loading mismatched weights."""
    settings = Settings(
        home=tutor_home,
        model=BASE_ID,
        engine="transformers",
        registry=tmp_path / "registry.sqlite",
        adapter_dir=tmp_path / "adapters",
    )
    registry = Registry.from_settings(settings)
    out = register_shipped(
        registry,
        Catalogue.load(DEFAULT_CATALOGUE),
        base_model="smollm2-135m-instruct",
        base_aliases=("smollm2-135m-instruct",),
        max_rank=64,
    )
    assert [r.version for r in out if r.variant == "tutor"] == ["tutor@1"]
    assert registry.alias("tutor") == "tutor@1"
    body = {
        "model": "tutor",
        "messages": [{"role": "user", "content": "Yesterday I go to the store."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    with running_server(create_app(settings)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-tutor-adapter"] == "base"
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "model": "tutor@1"}, timeout=60)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_adapter"
        assert "smollm2-135m-instruct" in r.json()["error"]["message"]


def test_ship_takes_lineage_from_the_run_when_the_registry_has_none(
    shipped_catalogue: Path, tiny_path: Path, tmp_path: Path
) -> None:
    """A Stage 2 run registered before its shipped parent was (parent unset in the registry)
    still ships as that folder's child: its config.json names the folder it started from."""
    stage1 = shipped_catalogue.parent / "shipped" / "tutor"
    run_dir = tmp_path / "runs" / "stage2"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"resolved": {"init_adapter": str(stage1)}}))
    registry = Registry(tmp_path / "r.sqlite", store=tmp_path / "rstore", roots=[tmp_path])
    child = registry.add(
        make_random_adapter(tiny_path, tmp_path / "runs" / "s9", seed=19),
        variant="tutor-es-l2",
        base_model=str(tiny_path),
        max_rank=16,
        source={"run": "stage2", "run_dir": str(run_dir)},
    )
    assert child.parent is None
    manifest = ship(registry, child.name, tmp_path / "out", base_id=BASE_ID, shipped_version=2)
    stage1_manifest = json.loads((stage1 / MANIFEST).read_text())
    assert manifest["parent_sha256"] == stage1_manifest["sha256"]
    assert manifest["parent_variant"] == "tutor"
    assert manifest["parent_trained_as"] == stage1_manifest["trained_as"]
    # without a run to read, no lineage is invented
    orphan = registry.add(
        make_random_adapter(tiny_path, tmp_path / "runs" / "s10", seed=20),
        variant="tutor-es-l2",
        base_model=str(tiny_path),
        max_rank=16,
    )
    bare = ship(registry, orphan.name, tmp_path / "out2", base_id=BASE_ID)
    assert bare["parent_sha256"] is None and bare["parent_variant"] is None


def test_every_shipped_variant_stays_resident_by_default(tmp_path) -> None:
    """Learners switch variant from turn to turn; with fewer resident slots than shipped
    adapters the LRU reloads one on almost every turn (the capacity run found 16 loads in 12
    turns with 4 slots for 5 variants). The default keeps all of them (five tutors and the English
    corrector) and room for a promotion."""
    shipped = [v for v in Catalogue.load(DEFAULT_CATALOGUE).variants.values() if v.shipped]
    assert len(shipped) == 6
    assert Settings(home=tmp_path).max_resident_adapters >= len(shipped) + 1
