"""One settings object for the whole service, read from ``TUTOR_*`` variables.

It is handed to the app factory (``create_app(settings)``), which keeps it on ``app.state`` and
gives it to what it builds (the engine, the chat service, the limits), rather than imported as a
global, so tests build an app with their own settings and several apps can live in one process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.paths import DEFAULT_HOME, REPO, default_vllm_python, is_database_url

DEFAULT_CATALOGUE = REPO / "adapters" / "catalogue.yaml"


class ApiKey(BaseModel):
    """A key as configured: only its sha256 is stored, never the key itself."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["chat", "admin"]] = Field(default_factory=lambda: ["chat"])
    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None
    models: list[str] | None = Field(
        default=None,
        description="Model ids this key may use (shell patterns, e.g. tutor-es-*); unset: all.",
    )


def _registry_location(value: Any) -> Any:
    """A postgresql:// URL stays a string; anything else is a path.

    Left to pydantic, ``Path | str`` would make every value a Path, and Path("postgresql://h/db")
    collapses the "//" into "postgresql:/h/db".
    """
    if is_database_url(value):
        return value.strip()
    if isinstance(value, str | os.PathLike):
        return Path(value)
    return value


RegistryLocation = Annotated[Path | str, BeforeValidator(_registry_location)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUTOR_", extra="ignore")

    home: Path = Field(
        default=DEFAULT_HOME,
        description="Cache for prepared models, adapters and generated data.",
    )
    model: str = Field(
        default="smollm2-135m-instruct",
        description="Base model: a preset name, a local folder, or a Hugging Face hub id.",
    )
    served_model_name: str | None = Field(
        default=None, description="Public id of the base model; derived from `model` if unset."
    )
    engine: Literal["vllm", "transformers", "openai"] = Field(
        default="vllm",
        description="vllm (production; managed or remote), transformers (in-process dev/test "
        "engine) or openai (any OpenAI-compatible upstream).",
    )
    host: str = "127.0.0.1"
    port: int = 8000

    catalogue: Path = Field(default=DEFAULT_CATALOGUE, description="Variant catalogue (YAML).")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description='Per-variant adapter folder overrides, e.g. {"tutor": "/path/to/peft"}.',
    )
    shipped_adapters: bool = Field(
        default=True,
        description="On start, register the catalogue's shipped adapters as <variant>@<n> and "
        "point aliases nobody else has promoted at them.",
    )
    upstream_models: dict[str, str] = Field(
        default_factory=dict,
        description="openai engine: variant or adapter name -> upstream model name.",
    )

    upstream_url: str | None = Field(
        default=None, description="openai engine: base URL of the upstream, e.g. .../v1."
    )
    upstream_api_key: str = "none"
    upstream_timeout: float = 120.0

    registry: RegistryLocation | None = Field(
        default=None,
        description="Adapter registry: a SQLite file (default $TUTOR_HOME/registry.sqlite), or a "
        "postgresql:// URL that several gateways share (the `postgres` extra).",
    )
    adapter_dir: Path | None = Field(
        default=None,
        description="Where registered adapters are stored; default $TUTOR_HOME/adapters.",
    )
    extra_adapter_roots: list[Path] = Field(
        default_factory=list,
        description="Folders besides $TUTOR_HOME that adapters may be registered from.",
    )

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    max_lora_rank: int = Field(default=16, description="Adapters above this rank are refused.")
    max_resident_adapters: int = Field(
        default=8,
        description="Adapter versions kept loaded in the engine (LRU beyond this). At least the "
        "shipped adapters (five tutors and the English corrector) plus room for a promotion: "
        "with 4, learners switching among the five tutors reloaded an adapter on almost every "
        "turn (docs/PERFORMANCE.md).",
    )
    registry_poll_interval: float = Field(
        default=0.5,
        description="Seconds between checks for promotions made by other processes (another "
        "gateway, the CLI): a stat of the SQLite file or a one-row query on PostgreSQL, so a "
        "promotion reaches every gateway within a second (tests/deploy/test_cluster.py).",
    )
    admin_key: SecretStr | None = Field(
        default=None, description="Bearer key for /admin; the admin API is off without one."
    )

    vllm_url: str | None = Field(
        default=None, description="A remote vLLM's /v1 URL; unset: start a managed vLLM."
    )
    vllm_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key vLLM requires: sent to a remote vLLM, and a managed vLLM is "
        "started with it (VLLM_API_KEY), so nothing else on the host can load adapters into it.",
    )
    vllm_urls: str | None = Field(
        default=None,
        description="Several remote vLLM replicas, comma-separated /v1 URLs, or dns+http://name:"
        "port/v1 for every address a name resolves to (a headless Service); the gateway routes "
        "each adapter version to a replica that holds it (server/engines/replicas.py).",
    )
    vllm_routing: Literal["affinity", "round_robin"] = Field(
        default="affinity",
        description="With several replicas: affinity (a version goes where it is loaded, else by "
        "consistent hashing with a load bound) or round_robin (for comparison).",
    )
    vllm_load_factor: float = Field(
        default=1.25,
        ge=1.0,
        description="A replica takes a request while its running requests stay under this times "
        "the mean; above it a hot version spreads to the next replica on the ring.",
    )
    vllm_health_interval: float = Field(
        default=1.0, gt=0, description="Seconds between health checks of each vLLM replica."
    )
    vllm_python: Path = Field(
        default_factory=default_vllm_python,
        description="Interpreter of the virtual environment vLLM is installed in; default: the "
        "checkout's .venv-vllm (`make vllm`), or this interpreter for an installed wheel.",
    )
    vllm_port: int = 8100
    vllm_max_loras: int = Field(default=4, description="vLLM --max-loras: adapters per batch.")
    vllm_dtype: str = Field(
        default="auto",
        description="vLLM --dtype. auto: float32 on a CPU without native bf16, bfloat16 on one "
        "with it, vLLM's own choice on a GPU (server/hardware.py). float32 matches PEFT.",
    )
    vllm_max_model_len: int = 4096
    vllm_block_size: int | None = Field(
        default=None,
        description="vLLM --block-size (tokens per KV block, the unit of prefix caching). Unset: "
        "32 on CPU, where vLLM's 128 is longer than a persona; vLLM's default on a GPU.",
    )
    vllm_speculation: str = Field(
        default="off",
        description="vLLM --speculative-config: off; auto (n-gram prompt lookup on CPU, where it "
        "doubled the learners served at TTFT p95 <= 2 s, but a client's disconnect once failed "
        "to stop vLLM with it; none on a GPU); or a JSON object. docs/PERFORMANCE.md, section 7.",
    )
    vllm_extra_args: list[str] = Field(default_factory=list)
    vllm_start_timeout: float = 300.0
    max_context: int = 4096

    spelling_in_context: bool = Field(
        default=True,
        description=(
            "The English spelling pass asks the base model which spelling fits where the engine "
            "ranks next tokens (vLLM, transformers): 273 of 350 JFLEG train-split words right, "
            "257 by word frequency alone, for one more one-token engine call in a grounded turn "
            "with an unknown word (its cost: docs/EVAL.md 8g). False: by frequency alone."
        ),
    )

    # Front-ends: the Gradio page at /ui and Open WebUI's background tasks (server/tasks.py).
    ui: bool = Field(default=True, description="`tutor serve` mounts the Gradio tutor at /ui.")
    route_tasks: bool = Field(
        default=True, description="Send Open WebUI's title/tags/follow-up requests to task_model."
    )
    task_model: str | None = Field(
        default=None, description="Model id for background task requests; unset: the base model."
    )
    ui_api_key: SecretStr | None = Field(
        default=None, description="Chat key the mounted /ui sends to the gateway when keys are on."
    )

    # Access, limits and faults (docs/SECURITY.md, docs/OPERATIONS.md).
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of {"name", "sha256", "scopes", "rpm", "tpm", "max_streams"}.',
    )
    api_keys_file: Path | None = Field(
        default=None, description="YAML/JSON file of hashed keys (`tutor keys create` writes it)."
    )
    tools: Literal["ignore", "reject", "forward"] = Field(
        default="ignore",
        description="A request's `tools`: ignore (answer without them, counted in /metrics and "
        "logged once per key; Open WebUI sends its built-in tools with every chat), reject (a "
        "400 naming `tools`), or forward (to vLLM or the upstream, which return `tool_calls`).",
    )
    vllm_tool_parser: str = Field(
        default="hermes",
        description="With TUTOR_TOOLS=forward, the managed vLLM's --tool-call-parser for "
        '`tool_choice: "auto"` (hermes: Qwen3\'s format); a named tool needs none.',
    )
    public_models: Literal["all", "variants"] = Field(
        default="all",
        description="What chat-only keys see and may ask for: all (variants, the base model and "
        "every @n version) or variants (the tutors only, as learners in Open WebUI should see "
        "them; admin keys still see and use everything).",
    )
    public_health: bool = Field(default=True, description="/health needs no key.")
    public_metrics: bool = Field(default=True, description="/metrics needs no key.")
    cors_origins: list[str] = Field(
        default_factory=list, description='Browser origins allowed by CORS, e.g. ["*"].'
    )
    default_rpm: int = Field(default=0, description="Requests per minute per key; 0: no limit.")
    default_tpm: int = Field(default=0, description="Tokens per minute per key; 0: no limit.")
    default_max_streams: int = Field(
        default=0, description="Concurrent requests per key; 0: no limit."
    )
    variant_concurrency: int = Field(
        default=0, description="Concurrent generations per variant; 0: no limit."
    )
    variant_queue_timeout: float = Field(
        default=5.0, description="Seconds a request waits for a busy variant before a 429."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis (redis://host:6379/0) where several gateways share the key limits "
        "and variant quotas, so together they give a key exactly its limit; unset: each gateway "
        "counts in its own memory. Needs the `redis` extra.",
    )
    max_body_bytes: int = Field(default=1_000_000, description="Largest request body.")
    max_messages: int = Field(default=200, description="Most messages in one request.")
    max_content_chars: int = Field(default=32_000, description="Longest message content.")
    shutdown_grace: float = Field(
        default=30.0, description="Seconds running streams may take to finish on shutdown."
    )

    # Logs (server/logs.py): one line per request, with its x-request-id.
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line, for log collectors."
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    # Training and evaluation data (common/corpora.py and common/data.py read TUTOR_DATA_DIR the
    # same way).
    data_dir: Path | None = Field(
        default=None,
        description="Learner-error data (JFLEG, COWS-L2H, MuCGEC); default "
        "<checkout>/../shared/data, or <home>/data for an installed wheel.",
    )

    @property
    def model_is_local(self) -> bool:
        """The base model's weights are on this machine (the in-process engine, a vLLM started
        or reached with them), not behind an upstream that names its own models."""
        return self.engine != "openai"

    @property
    def registry_url(self) -> str | None:
        """The PostgreSQL registry's URL; None when the registry is a SQLite file."""
        return self.registry if isinstance(self.registry, str) else None

    @property
    def registry_path(self) -> Path:
        """The SQLite registry's file. A PostgreSQL registry has none: ask ``registry_url``
        first (a wrong path here would silently start a second, empty registry)."""
        if isinstance(self.registry, str):
            raise ValueError("TUTOR_REGISTRY is a PostgreSQL URL: the registry has no file")
        return self.registry or self.home / "registry.sqlite"

    @property
    def registry_location(self) -> Path | str:
        """What ``Registry`` opens: the URL, or the SQLite file."""
        return self.registry_url or self.registry_path

    @property
    def adapter_store(self) -> Path:
        return self.adapter_dir or self.home / "adapters"

    @property
    def adapter_roots(self) -> list[Path]:
        """Registration copies only from here: the cache (training runs), the catalogue's folder
        (the shipped adapters) and configured folders."""
        return [self.home, self.catalogue.parent, *self.extra_adapter_roots]
