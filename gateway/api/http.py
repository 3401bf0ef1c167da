"""The HTTP front door: FastAPI routes that parse and format, everything else is gateway.core."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway import validation
from gateway.api import schemas
from gateway.core import CamOptions, ClassChoice, GatewayCore, Pin, classmap_geotiff, classmap_png, served_methods
from gateway.errors import BadRequest, GatewayError, InvalidImage, InvalidParameter, UnsupportedMediaType

log = logging.getLogger("gateway")
LABEL_PATTERN = validation.NAME_PATTERN
Params = TypeVar("Params", bound=schemas.Strict)
ERRORS = {s: {"model": schemas.ErrorResponse} for s in (400, 404, 413, 415, 422, 429, 503, 504)}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string", "format": "binary"}}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictBatchRequest"}},
        },
    }
}


def error_response(status: int, code: str, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def describe(errors: list[dict]) -> str:
    """pydantic errors as one line `field: what is wrong`, never quoting the value (it may be a megabyte)."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"] if p not in ("query", "body", "header")) or "body"
        what = "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError):
        return error_response(exc.http_status, exc.code, exc.message, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_parameter", describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})  # 405 carries `Allow`
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, _: ClientDisconnect):
        """One line, not a traceback: a client that goes away mid-body is routine. Nobody reads the answer; 499
        (a client-closed request, as nginx names it) is what the metrics count."""
        log.info("client %s closed the connection before sending the whole body of %s %s",
                 request.client.host if request.client else "?", request.method, request.url.path)
        return error_response(499, "client_disconnected", "the client closed the connection mid-body")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error; the request id is in the logs")


async def get_core(request: Request) -> GatewayCore:
    return request.app.state.core


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("an instance's b64 field is not valid base64") from None


def request_id(x_request_id: str | None = Header(None, description="echoed back (printable ASCII, at most "
                                                 f"{validation.MAX_REQUEST_ID} characters)")) -> str | None:
    return None if x_request_id is None else validation.check_request_id(x_request_id)


async def form_params(request: Request, params: Params) -> Params:
    """The route's parameters may also come as multipart form fields (`curl -F method=gradcam++`, no URL encoding):
    merged with the query string, each given in one place only. A field that is no parameter is refused (422) like an
    unknown query parameter; nothing is silently ignored. Call after read_images (the parsed form is cached)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        return params
    fields = {k: v for k, v in (await request.form()).multi_items() if isinstance(v, str)}
    if not fields:
        return params
    twice = sorted(set(fields) & set(request.query_params))
    if twice:
        raise InvalidParameter(f"{', '.join(map(validation.excerpt, twice))}: given both in the query and as a "
                               "form field")
    try:
        return type(params).model_validate({**request.query_params, **fields})
    except ValidationError as exc:
        raise InvalidParameter(describe(exc.errors())) from None


async def read_images(request: Request, max_instances: int) -> tuple[list[bytes], schemas.PredictBatchRequest | None]:
    """Multipart field `image`, or a JSON body {"instances": [{"b64": ...}]}."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            names = ", ".join(form.keys()) or "none"
            raise InvalidParameter(f"expected a multipart file field named 'image' (got fields: {names})")
        data = await upload.read()
        await form.close()
        return [data], None
    if content_type == "application/json":
        raw = await request.body()
        if not raw:
            raise BadRequest("the JSON body is empty")
        try:
            body = schemas.PredictBatchRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                raise BadRequest(f"the body is not valid JSON: {first['msg']}") from None
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidParameter(f"{where}: {first['msg']}") from None
        if len(body.instances) > max_instances:
            raise InvalidParameter(f"{len(body.instances)} instances; the limit is {max_instances}")
        return [_b64(i.b64) for i in body.instances], body
    if not content_type:
        raise InvalidImage("the request has no body: send multipart/form-data with an 'image' file or JSON")
    raise UnsupportedMediaType(f"content type {content_type!r} is not accepted: use multipart/form-data or "
                               "application/json")


def _pin(params: schemas.TargetParams, routing_key: str | None, body=None) -> Pin:
    """The target from the query (or form) and, for a JSON body, its own `version`/`label`; Pin validates it."""
    version, label = params.version, params.label
    if body is not None:
        version = body.version if body.version is not None else version
        label = body.label if body.label is not None else label
    return Pin(params.model, version, label, routing_key)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/predict", response_model=schemas.PredictResponse, responses=ERRORS, openapi_extra=IMAGE_BODY,
                 summary="Classify one image (multipart) or a batch (JSON)")
    async def predict(
        request: Request,
        params: Annotated[schemas.PredictParams, Query()],
        core: GatewayCore = Depends(get_core),
        x_routing_key: str | None = Header(None, description="sticky canary routing key (printable ASCII)"),
        x_request_id: str | None = Depends(request_id),
    ):
        validation.check_top_k(params.top_k, core.settings.max_top_k)  # before reading the body
        images, body = await read_images(request, core.settings.max_batch_instances)
        params = await form_params(request, params)
        k = body.top_k if body is not None and body.top_k is not None else params.top_k
        result = await core.predict(images, k, _pin(params, x_routing_key, body), x_request_id, params.gsd_m)
        ranked = [[schemas.Prediction(label=r.label, index=r.index, probability=r.probability) for r in p]
                  for p in result.predictions]
        scenes = [scene_info(s) for s in result.scenes] if result.scenes else None
        return JSONResponse(
            schemas.PredictResponse(model=result.model, version=result.version,
                                    predictions=ranked if body is not None else ranked[0],
                                    request_id=result.request_id,
                                    scene=scenes if body is not None or scenes is None else scenes[0],
                                    ).model_dump(exclude_none=body is None and scenes is None),
            headers={"X-Model-Version": str(result.version), "X-Request-ID": result.request_id},
        )

    @router.post("/gradcam", responses={**ERRORS, 200: {
        "content": {"image/png": {}, "application/json": {"schema": {"$ref": "#/components/schemas/GradCamJSON"}}},
        "description": "PNG overlay (default) or, with Accept: application/json, the map and the PNG as base64"}},
        openapi_extra=IMAGE_BODY, summary="Explain a classification with a heat-map overlay",
        response_class=Response)
    async def gradcam(
        request: Request,
        params: Annotated[schemas.GradCamParams, Query()],
        core: GatewayCore = Depends(get_core),
        accept: str | None = Header(None),
        x_routing_key: str | None = Header(None, description="sticky canary routing key (printable ASCII)"),
        x_request_id: str | None = Depends(request_id),
    ):
        images, body = await read_images(request, 1)
        if len(images) != 1:
            raise InvalidParameter("/gradcam explains exactly one image")
        if body is not None and body.top_k is not None:
            raise InvalidParameter("top_k: /gradcam explains one class and takes no top_k")
        params = await form_params(request, params)
        label, index = validation.parse_class(params.class_) if params.class_ is not None else (None, None)
        options = CamOptions(params.method, params.alpha, params.colormap, params.max_side, params.seamless)
        result = await core.gradcam(images[0], ClassChoice(label, index, params.rank), options,
                                    _pin(params, x_routing_key, body), x_request_id, params.gsd_m)
        headers = {"X-Model-Version": str(result.version), "X-Class-Label": result.label,
                   "X-Class-Index": str(result.index), "X-Class-Probability": f"{result.probability:.6f}",
                   "X-Cam-Method": result.method, "X-Request-ID": result.request_id}
        if accept and "application/json" in accept:
            payload = schemas.GradCamJSON(
                model=result.model, version=result.version, label=result.label, index=result.index,
                probability=result.probability, method=result.method,
                heatmap=np.round(result.heatmap, 5).tolist(),
                png_base64=base64.b64encode(result.png).decode(), request_id=result.request_id,
                scene=scene_info(result.scene))
            return JSONResponse(payload.model_dump(), headers=headers)
        return Response(result.png, media_type="image/png", headers=headers)

    @router.post("/classmap", responses={**ERRORS, 200: {
        "content": {"image/png": {}, "image/tiff": {},
                    "application/json": {"schema": {"$ref": "#/components/schemas/ClassMapJSON"}}},
        "description": "A class and a confidence per cell of ground. Default: a PNG of the class map in the "
        "version's palette (`overlay=true`: over the image). `Accept: application/json`: the map as arrays. "
        "`Accept: image/tiff`: a GeoTIFF, band 1 the class index (uint8), band 2 the confidence (uint8, scale 1/255), "
        "in the input's CRS with the input's origin and one cell per pixel"}},
        openapi_extra=IMAGE_BODY, summary="Land cover per place: a class map of a scene or GeoTIFF",
        response_class=Response)
    async def classmap(
        request: Request,
        params: Annotated[schemas.ClassMapParams, Query()],
        core: GatewayCore = Depends(get_core),
        accept: str | None = Header(None),
        x_routing_key: str | None = Header(None, description="sticky canary routing key (printable ASCII)"),
        x_request_id: str | None = Depends(request_id),
    ):
        images, body = await read_images(request, 1)
        if len(images) != 1 or (body is not None and body.top_k is not None):
            raise InvalidParameter("/classmap maps exactly one image and takes no top_k")
        params = await form_params(request, params)
        validation.check_range("alpha", params.alpha, 0, 1)
        result = await core.classmap(images[0], params.gsd_m, _pin(params, x_routing_key, body), x_request_id)
        headers = {"X-Model-Version": str(result.version), "X-Request-ID": result.request_id}
        wanted = (accept or "").lower()
        if "application/json" in wanted:
            return JSONResponse(classmap_json(result).model_dump(), headers=headers)
        if "image/tiff" in wanted:
            tiff = await asyncio.to_thread(classmap_geotiff, result)
            return Response(tiff, media_type="image/tiff", headers=headers)
        side = min(params.max_side or core.settings.max_output_side, core.settings.max_output_side)
        png = await asyncio.to_thread(classmap_png, result, params.overlay, params.alpha, side)
        return Response(png, media_type="image/png", headers=headers)

    @router.get("/v1/models", response_model=schemas.ModelsResponse, summary="Models, versions, labels, status")
    async def models(core: GatewayCore = Depends(get_core)):
        return await core_models(core)

    @router.get("/healthz", response_model=schemas.Health, summary="Liveness: the process answers")
    async def healthz():
        return schemas.Health(status="ok")

    @router.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}},
                summary="Readiness: the backend can serve the default model")
    async def readyz(core: GatewayCore = Depends(get_core)):
        ok, detail = await core.ready()
        if ok:
            return schemas.Health(status="ready", detail=detail)
        return JSONResponse(schemas.Health(status="not ready", detail=detail).model_dump(), status_code=503,
                            headers={"Retry-After": "1"})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics(core: GatewayCore = Depends(get_core)):
        return Response(generate_latest(core.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def scene_info(summary) -> schemas.SceneInfo | None:
    if summary is None:
        return None
    return schemas.SceneInfo(rows=summary.rows, cols=summary.cols, cell_size_px=list(summary.cell_size_px),
                             gsd_m=summary.gsd_m, composition=composition(summary))


def composition(summary) -> list[schemas.CompositionEntry]:
    return [schemas.CompositionEntry(label=label, index=index, fraction=round(fraction, 6))
            for label, index, fraction in summary.composition]


def classmap_json(result) -> schemas.ClassMapJSON:
    summary = result.summary
    return schemas.ClassMapJSON(
        model=result.model, version=result.version, class_names=list(result.class_names),
        colors=[f"#{r:02x}{g:02x}{b:02x}" for r, g, b in result.colors], rows=summary.rows, cols=summary.cols,
        cell_size_px=list(summary.cell_size_px), gsd_m=summary.gsd_m,
        classes=result.classmap.classes.tolist(), confidence=np.round(result.classmap.confidence, 5).tolist(),
        composition=composition(summary), request_id=result.request_id)


async def core_models(core: GatewayCore) -> schemas.ModelsResponse:
    out = []
    for config in core.router.configs():
        try:
            states = await core.backend.version_states(config.name)
        except GatewayError:
            states = {}
        versions = []
        for v in sorted(config.versions):
            meta = core.backend.meta(config.name, v)
            try:
                signatures = await core.backend.signatures(config.name, v)
            except GatewayError:  # not loaded (yet) or the backend is down: nothing to claim
                signatures = frozenset()
            versions.append(schemas.VersionInfo(
                version=v, state=states.get(v, "UNKNOWN"),
                labels=sorted(k for k, lv in config.labels.items() if lv == v),
                class_names=list(meta.class_names), input_size=list(meta.input_size), metrics=meta.metrics,
                input_kind="tile" if meta.is_tile else "image", gsd_m=meta.gsd_m, card=meta.card,
                signatures=sorted(signatures), methods=served_methods(signatures)))
        out.append(schemas.ModelInfo(name=config.name, default=config.name == core.settings.model_name,
                                     versions=versions))
    return schemas.ModelsResponse(models=out)
