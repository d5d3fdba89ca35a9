"""Optional OpenTelemetry: one learner turn is one trace, from the client through the gateway to
the engine's server (here a second gateway of ours, as vLLM would be), with the SDK's in-memory
exporter."""

from __future__ import annotations

import time

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.settings import Settings
from server import tracing
from server.app import create_app
from tests.support import running_server

LEARNER = [{"role": "user", "content": "Yesterday I go to the store."}]
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_one_learner_turn_is_one_trace(tiny_settings):
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    upstream = create_app(tiny_settings)
    tracing.instrument(upstream, provider)
    with running_server(upstream) as up:
        front = create_app(
            Settings(
                engine="openai",
                model="tiny-qwen3",
                served_model_name="tiny-qwen3",
                upstream_url=f"{up}/v1",
            )
        )
        tracing.instrument(front, provider)
        with running_server(front) as url:
            for stream in (False, True):
                r = httpx.post(
                    f"{url}/v1/chat/completions",
                    headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
                    json={"model": "tutor", "messages": LEARNER, "max_tokens": 3, "stream": stream},
                    timeout=60,
                )
                assert r.status_code == 200
            httpx.get(f"{url}/health")  # not traced (the upstream's model list it asks for is)
    deadline = time.monotonic() + 5
    while len(_servers(spans)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    servers = _servers(spans)
    assert len(servers) == 4, [s.name for s in servers]  # front and upstream, twice
    assert {format(s.context.trace_id, "032x") for s in servers} == {TRACE}
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    fronts = [s for s in servers if s.parent.span_id == int(PARENT, 16)]
    assert len(fronts) == 2  # the gateway's spans continue the client's
    for s in servers:
        if s in fronts:
            continue
        # the engine's server span hangs under a span of the gateway's request
        parent = by_id[s.parent.span_id]
        while parent.parent is not None and parent not in fronts:
            parent = by_id[parent.parent.span_id]
        assert parent in fronts
    assert not any("/health" in s.name for s in spans.get_finished_spans())


def _servers(spans: InMemorySpanExporter) -> list:
    from opentelemetry.trace import SpanKind

    return [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.name == "POST /v1/chat/completions"
    ]


def test_tracing_is_off_unless_otel_variables_ask():
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
