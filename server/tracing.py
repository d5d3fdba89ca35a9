"""Optional OpenTelemetry tracing: one learner turn, one trace.

On when the standard variables ask for it (``OTEL_TRACES_EXPORTER`` other than ``none``, or an
``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` wins) and the ``otel`` extra
is installed; otherwise nothing here runs on a request. Then:

- the FastAPI app is instrumented: a server span per request, continuing the client's
  ``traceparent`` (Open WebUI sends one when its own tracing is on);
- the engine call carries the current span's ``traceparent`` to vLLM, which exports its own
  spans into the same trace when started with ``--otlp-traces-endpoint``.

Service name, resource attributes, sampler and exporter settings are the SDK's own ``OTEL_*``
variables; ``/health`` and ``/metrics`` are not traced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_active = False  # an app in this process is instrumented: outgoing calls carry its context


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(exporter or endpoint)


def _provider_from_env() -> Any:
    """A tracer provider as the SDK's environment variables describe it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "tutor-gateway")}
    )
    provider = TracerProvider(resource=resource)
    for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = name.strip().lower()
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console)", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument(app: Any, provider: Any = None) -> bool:
    """Trace ``app`` with ``provider`` (tests pass one with an in-memory exporter), or with one
    built from ``OTEL_*`` when those ask for tracing. True if the app is now traced."""
    global _active
    if provider is None:
        if not wanted():
            return False
        try:
            provider = _provider_from_env()
        except ImportError:
            log.warning("OTEL_* variables are set but the otel extra is not installed: no traces")
            return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="/health,/metrics"
    )
    _active = True
    log.info("OpenTelemetry tracing on")
    return True


def trace_headers() -> dict[str, str]:
    """The current span's W3C context (``traceparent``, ``tracestate``) for an outgoing call;
    empty when tracing is off."""
    if not _active:
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier
