"""The HTTP front door: FastAPI routes that parse and format, everything else is gateway.core."""

from __future__ import annotations

import base64
import binascii
import logging

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api import schemas
from gateway.core import CamOptions, ClassChoice, GatewayCore, Pin
from gateway.errors import BadRequest, GatewayError, InvalidImage, InvalidParameter, UnsupportedMediaType

log = logging.getLogger("gateway")
LABEL_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError):
        return error_response(exc.http_status, exc.code, exc.message, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'body'))}: {e['msg']}"
                 for e in exc.errors()]
        return error_response(422, "invalid_parameter", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

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


def _pin(model, version, label, routing_key, body=None) -> Pin:
    if body is not None:
        version = body.version if body.version is not None else version
        label = body.label if body.label is not None else label
    if version is not None and label is not None:
        raise InvalidParameter("pin either a version or a label, not both")
    return Pin(model, version, label, routing_key)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/predict", response_model=schemas.PredictResponse, responses=ERRORS, openapi_extra=IMAGE_BODY,
                 summary="Classify one image (multipart) or a batch (JSON)")
    async def predict(
        request: Request,
        core: GatewayCore = Depends(get_core),
        top_k: int = Query(5, ge=1, description="classes per image"),
        version: int | None = Query(None, ge=1, description="pin a model version"),
        label: str | None = Query(None, pattern=LABEL_PATTERN, description="pin a version label"),
        model: str | None = Query(None, pattern=LABEL_PATTERN, description="model name (default: the gateway's)"),
        x_routing_key: str | None = Header(None, max_length=256, description="sticky canary routing key"),
        x_request_id: str | None = Header(None, max_length=128),
    ):
        images, body = await read_images(request, core.settings.max_batch_instances)
        k = body.top_k if body is not None and body.top_k is not None else top_k
        result = await core.predict(images, k, _pin(model, version, label, x_routing_key, body), x_request_id)
        ranked = [[schemas.Prediction(label=r.label, index=r.index, probability=r.probability) for r in p]
                  for p in result.predictions]
        return JSONResponse(
            schemas.PredictResponse(model=result.model, version=result.version,
                                    predictions=ranked if body is not None else ranked[0],
                                    request_id=result.request_id).model_dump(),
            headers={"X-Model-Version": str(result.version), "X-Request-ID": result.request_id},
        )

    @router.post("/gradcam", responses={**ERRORS, 200: {
        "content": {"image/png": {}, "application/json": {"schema": {"$ref": "#/components/schemas/GradCamJSON"}}},
        "description": "PNG overlay (default) or, with Accept: application/json, the map and the PNG as base64"}},
        openapi_extra=IMAGE_BODY, summary="Explain a classification with a heat-map overlay",
        response_class=Response)
    async def gradcam(
        request: Request,
        core: GatewayCore = Depends(get_core),
        class_: str | None = Query(None, alias="class", max_length=128,
                                   description="class to explain: a label or an index (default: the top class)"),
        rank: int | None = Query(None, ge=1, description="explain the rank-th most probable class (1 = top)"),
        method: str = Query("gradcam", max_length=32, description="CAM method"),
        alpha: float = Query(0.45, ge=0, le=1, description="heat-map opacity"),
        colormap: str = Query("turbo", max_length=32, description="OpenCV colormap name"),
        max_side: int | None = Query(None, ge=16, description="longest side of the PNG (capped by the gateway)"),
        version: int | None = Query(None, ge=1),
        label: str | None = Query(None, pattern=LABEL_PATTERN),
        model: str | None = Query(None, pattern=LABEL_PATTERN),
        accept: str | None = Header(None),
        x_routing_key: str | None = Header(None, max_length=256),
        x_request_id: str | None = Header(None, max_length=128),
    ):
        images, body = await read_images(request, 1)
        if len(images) != 1:
            raise InvalidParameter("/gradcam explains exactly one image")
        choice = ClassChoice(rank=rank)
        if class_ is not None:
            choice = ClassChoice(index=int(class_), rank=rank) if class_.lstrip("-").isdigit() else \
                ClassChoice(label=class_, rank=rank)
        result = await core.gradcam(images[0], choice, CamOptions(method, alpha, colormap, max_side),
                                    _pin(model, version, label, x_routing_key, body), x_request_id)
        headers = {"X-Model-Version": str(result.version), "X-Class-Label": result.label,
                   "X-Class-Index": str(result.index), "X-Class-Probability": f"{result.probability:.6f}",
                   "X-Cam-Method": result.method, "X-Request-ID": result.request_id}
        if accept and "application/json" in accept:
            payload = schemas.GradCamJSON(
                model=result.model, version=result.version, label=result.label, index=result.index,
                probability=result.probability, method=result.method,
                heatmap=np.round(result.heatmap, 5).tolist(),
                png_base64=base64.b64encode(result.png).decode(), request_id=result.request_id)
            return JSONResponse(payload.model_dump(), headers=headers)
        return Response(result.png, media_type="image/png", headers=headers)

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
            versions.append(schemas.VersionInfo(
                version=v, state=states.get(v, "UNKNOWN"),
                labels=sorted(k for k, lv in config.labels.items() if lv == v),
                class_names=list(meta.class_names), input_size=list(meta.input_size), metrics=meta.metrics))
        out.append(schemas.ModelInfo(name=config.name, default=config.name == core.settings.model_name,
                                     versions=versions))
    return schemas.ModelsResponse(models=out)
