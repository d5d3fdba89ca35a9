"""App factory. The lifespan owns start-up (engine, adapters) and shutdown."""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from adapters.registry import Registry
from adapters.variants import Catalogue
from common.model_store import base_identity
from common.settings import Settings
from server.auth import KeyStore
from server.engines import Engine, build_engine
from server.errors import BodyTooLarge, install_error_handlers
from server.limits import build_limits
from server.metrics import Metrics
from server.observe import RequestObserver
from server.routes import admin, chat, health, models
from server.serving import ChatService
from server.timing import ARRIVAL
from server.tracing import instrument

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return importlib.metadata.version("recast-tutor")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


VERSION = _version()


class CollapseSlashes:
    """ASGI middleware: ``/v1//models`` is ``/v1/models``.

    Clients configured with a base URL ending in a slash (``http://host/v1/``) join paths into
    double slashes; they should still reach the API.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            path = re.sub(r"/{2,}", "/", scope["path"])
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class ArrivalClock:
    """ASGI middleware: stamp the request's arrival before its body is read or validated, so the
    gateway's own time in ``Server-Timing`` counts the parsing too (server/timing.py)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope[ARRIVAL] = time.perf_counter()
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` before anything parses them."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self._message(), param="body")
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes"

    async def _refuse(self, send) -> None:
        err = BodyTooLarge(self._message(), param="body")
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def freeze_startup_heap() -> None:
    """Move what start-up built out of the cyclic collector's reach (``gc.freeze``).

    The imports, settings, catalogue, engine and routes live as long as the process, yet every
    full collection walked them all again: 26 ms with the event loop stopped on this machine
    (83,000 objects, no UI), which was the p99 of 32 paced streams through the gateway
    (docs/PERFORMANCE.md, section 6). Frozen, a full collection walks only what requests made
    since: about 1 ms. Reference counting still frees frozen objects; only cycles among them
    wait for the ``gc.unfreeze()`` at shutdown.
    """
    gc.collect()  # start-up's own garbage goes now, not into the frozen set
    gc.freeze()


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the gateway. Pass ``engine`` to inject one; otherwise settings choose it."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalogue = Catalogue.load(settings.catalogue, settings.adapters)
        base_id, base_source = base_identity(settings)
        eng = engine or build_engine(settings)
        await eng.start()
        app.state.metrics.watch_replicas(eng.replica_stats)  # nothing for a single upstream
        limiter = app.state.limiter
        await limiter.start()
        try:
            registry = Registry.from_settings(settings)
            service = ChatService(
                settings,
                eng,
                catalogue,
                base_id=base_id,
                base_source=base_source,
                metrics=app.state.metrics,
                registry=registry,
                limits=limiter,
            )
            await service.start()
            app.state.service = service
            log.info("tutor serving %s with the %s engine", base_id, eng.name)
            freeze_startup_heap()
            try:
                yield
            finally:
                gc.unfreeze()  # start-up's objects are collectable again, as before the freeze
                await service.aclose()
                await asyncio.to_thread(registry.close)  # PostgreSQL: the pool's connections
        finally:
            app.state.service = None
            try:
                await eng.aclose()
            finally:
                await limiter.aclose()

    app = FastAPI(title="Tutor", version=VERSION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics(
        {"version": VERSION, "engine": settings.engine, "model": settings.model}
    )
    app.state.service = None
    app.state.keys = KeyStore.from_settings(settings)
    # key limits and variant quotas: in memory, or in Redis shared by several gateways
    app.state.limiter = build_limits(settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["authorization", "content-type"],
            expose_headers=[
                "x-tutor-variant",
                "x-tutor-adapter",
                "x-tutor-grounding",
                "server-timing",
                "retry-after",
            ],
        )
    # inside CollapseSlashes, which copies the scope: the router's route is seen on this one
    app.add_middleware(RequestObserver, metrics=app.state.metrics)
    app.add_middleware(CollapseSlashes)
    app.add_middleware(ArrivalClock)  # added last: the outermost layer, the first to run
    for router in (chat.router, models.router, health.router):
        app.include_router(router)
    # The completion routes are served as plain ASGI apps (routes/chat.py, ChatEndpoint), ahead
    # of their FastAPI declarations, which stay to document them in /openapi.json.
    app.router.routes[0:0] = chat.completion_routes()
    if app.state.keys.has_admin:  # no admin key, no admin API at all
        app.include_router(admin.router)
    instrument(app)  # OpenTelemetry, when OTEL_* ask for it (server/tracing.py)
    return app
