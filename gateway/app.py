"""The app factory: settings -> backend, routing, core -> FastAPI app whose lifespan also runs the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from gateway.api.demo import build_demo_router
from gateway.api.docs import build_docs_router
from gateway.api.http import build_router, install_error_handlers
from gateway.api.limits import ON_REFUSED, BodySizeLimit, ResponseMetrics, SecurityHeaders
from gateway.api.rollout_http import build_rollout_router
from gateway.backends.base import Backend
from gateway.core import GatewayCore
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.model_config import ConfigStore
from gateway.rollout.manager import RolloutManager
from gateway.rollout.monitor import Monitor
from gateway.rollout.router import Router
from gateway.rollout.shadow import ShadowMirror
from gateway.rollout.state import RolloutStore
from gateway.settings import BackendKind, Settings

log = logging.getLogger("gateway")


def make_backend(settings: Settings) -> Backend:
    if settings.backend == BackendKind.tfserving:
        from gateway.backends.tfserving import TFServingBackend

        return TFServingBackend(settings.models_dir, settings.tfserving_address, settings.tfserving_base_path)
    from gateway.backends.local import LocalBackend

    return LocalBackend(settings.models_dir)


def build(settings: Settings, backend: Backend | None = None) -> tuple[GatewayCore, RolloutManager]:
    """Wire the parts: one router, monitor and shadow mirror shared by both front doors and the rollout manager."""
    metrics = Metrics()
    store = RolloutStore(settings.models_dir, settings.model_name)
    router = Router(settings.model_name, store, settings.rollout_poll_s)
    core = GatewayCore(settings, backend or make_backend(settings), router, metrics)
    monitor = Monitor(settings)
    manager = RolloutManager(settings, core.backend, ConfigStore(settings.models_dir, settings.tfserving_base_path),
                             store, router, monitor, metrics)
    router.monitor = monitor
    router.shadow = ShadowMirror(metrics, monitor, settings.shadow_queue_size)
    router.on_observe = manager.check
    return core, manager


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    core, manager = build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await core.backend.start()
        await manager.sync(force=True)  # local: loads the configured versions; tfserving: TF Serving loads its own
        try:
            resumed = await manager.resume()
        except GatewayError as exc:  # e.g. TF Serving still down: keep serving, status reports the phase
            log.error("could not finish the interrupted rollout yet: %s", exc.message)
            resumed = None
        if resumed:
            log.warning(resumed)
        core.router.shadow.start()
        sync_task = asyncio.get_running_loop().create_task(manager.sync_forever())
        grpc_server = None
        if settings.grpc_port:
            from gateway.api.grpc_service import start_grpc_server

            grpc_server, port = await start_grpc_server(core, settings.host, settings.grpc_port)
            app.state.grpc_port = port
            log.info("gRPC API on %s:%d", settings.host, port)
        try:  # the state reaches uvicorn's protocol (GuardedHttpProtocol) and every request's scope
            yield {ON_REFUSED: lambda reason: core.metrics.rejected.labels(reason).inc()}
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            sync_task.cancel()
            await core.router.shadow.stop()
            await core.backend.close()

    app = FastAPI(
        title="scenecam gateway",
        version="1.0",
        summary="Scene and land-cover classification with Grad-CAM explanations, over TensorFlow Serving",
        lifespan=lifespan,
        docs_url=None,  # served by build_docs_router, from local assets
        redoc_url=None,
    )
    app.state.core = core
    app.state.rollout = manager
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(build_router())
    app.include_router(build_demo_router())
    app.include_router(build_rollout_router())
    app.include_router(build_docs_router(app))
    add_middleware(app, settings, core)
    _document_manual_bodies(app)
    return app


def add_middleware(app: FastAPI, settings: Settings, core: GatewayCore) -> None:
    """Outermost first: count every answer, add security headers, CORS (when configured), then body limits."""
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Accept", "Authorization", "X-Routing-Key", "X-Request-ID"],
                           expose_headers=CORS_EXPOSED, max_age=600)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ResponseMetrics, metrics=core.metrics, routes=app.routes)


CORS_EXPOSED = ["X-Model-Version", "X-Request-ID", "X-Class-Label", "X-Class-Index", "X-Class-Probability",
                "X-Cam-Method", "Retry-After"]


def _document_manual_bodies(app: FastAPI) -> None:
    """Routes that read multipart *or* JSON reference their JSON schemas by hand; add them to the components."""
    from fastapi.openapi.utils import get_openapi

    from gateway.api import schemas

    def openapi():
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (schemas.PredictBatchRequest, schemas.GradCamJSON, schemas.ClassMapJSON):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
