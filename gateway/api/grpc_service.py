"""The gRPC front door (scenecam.v1.Gateway) plus the standard health and reflection services, over the same core.

Field values are checked where the HTTP door's are: gateway/validation.py, called by the core (Pin, top_k, class,
method, colormap, alpha, max_side), so both doors refuse the same inputs with the same words.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.core import CamOptions, ClassChoice, GatewayCore, Pin, classmap_geotiff
from gateway.errors import GatewayError
from gateway.protos import gateway_pb2, gateway_pb2_grpc

SERVICE = "scenecam.v1.Gateway"


class Malformed:
    """A request whose bytes do not parse as its message: the handler answers INVALID_ARGUMENT (grpc would otherwise
    answer UNKNOWN with the parser's exception text)."""

    def __init__(self, message: str):
        self.message = message


def _lenient(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception:  # DecodeError (bad wire type, truncated, invalid UTF-8 in a string), whatever its class
            return Malformed(message_class.DESCRIPTOR.full_name)

    return parse


def _guarded(behavior, method: str, metrics):
    """Malformed requests answered INVALID_ARGUMENT; every answer counted by method and status code."""
    async def handle(request, context: grpc.aio.ServicerContext):
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request body is not a valid {request.message} protobuf message")
            return await behavior(request, context)
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics.grpc_responses.labels(method, code.name).inc()

    return handle


def add_gateway_service(servicer: GatewayServicer, server: grpc.aio.Server) -> None:
    """Like the generated add_GatewayServicer_to_server, for every rpc the proto declares, with a deserializer that
    turns undecodable bytes into INVALID_ARGUMENT."""
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name), method.name, servicer.core.metrics),
            request_deserializer=_lenient(getattr(gateway_pb2, method.input_type.name)),
            response_serializer=getattr(gateway_pb2, method.output_type.name).SerializeToString)
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _scene(summary) -> gateway_pb2.Scene | None:
    if summary is None:
        return None
    return gateway_pb2.Scene(
        rows=summary.rows, cols=summary.cols, cell_height_px=summary.cell_size_px[0],
        cell_width_px=summary.cell_size_px[1], gsd_m=summary.gsd_m or 0.0,
        composition=[gateway_pb2.CompositionEntry(label=label, index=index, fraction=fraction)
                     for label, index, fraction in summary.composition])


def _gsd(request) -> float | None:
    return request.gsd_m if request.HasField("gsd_m") else None


def _pin(target: gateway_pb2.Target, metadata) -> Pin:
    key = target.routing_key or dict(metadata or ()).get("x-routing-key")
    return Pin(target.model or None, target.version or None, target.label or None, key or None)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, core: GatewayCore):
        self.core = core

    async def Predict(self, request: gateway_pb2.PredictRequest, context: grpc.aio.ServicerContext):
        try:
            result = await self.core.predict(list(request.images), request.top_k or 5,
                                             _pin(request.target, context.invocation_metadata()), gsd_m=_gsd(request))
        except GatewayError as exc:
            await context.abort(exc.grpc_status, exc.message)
        return gateway_pb2.PredictResponse(
            model=result.model, version=result.version, request_id=result.request_id,
            results=[gateway_pb2.Predictions(predictions=[
                gateway_pb2.Prediction(label=r.label, index=r.index, probability=r.probability) for r in ranked],
                scene=_scene(scene))
                for ranked, scene in zip(result.predictions, result.scenes or [None] * len(result.predictions),
                                         strict=True)])

    async def GradCam(self, request: gateway_pb2.GradCamRequest, context: grpc.aio.ServicerContext):
        choice = ClassChoice(
            label=request.class_label if request.HasField("class_label") else None,
            index=request.class_index if request.HasField("class_index") else None,
            rank=request.rank if request.HasField("rank") else None,
        )
        options = CamOptions(request.method or "gradcam", request.alpha if request.HasField("alpha") else 0.45,
                             request.colormap or "turbo", request.max_side or None, request.seamless)
        try:
            result = await self.core.gradcam(request.image, choice, options,
                                             _pin(request.target, context.invocation_metadata()), gsd_m=_gsd(request))
        except GatewayError as exc:
            await context.abort(exc.grpc_status, exc.message)
        return gateway_pb2.GradCamResponse(
            model=result.model, version=result.version, label=result.label, index=result.index,
            probability=result.probability, png=result.png, heatmap_height=result.heatmap.shape[0],
            heatmap_width=result.heatmap.shape[1], heatmap=np.asarray(result.heatmap, np.float32).ravel().tolist(),
            method=result.method, request_id=result.request_id, scene=_scene(result.scene))

    async def ClassMap(self, request: gateway_pb2.ClassMapRequest, context: grpc.aio.ServicerContext):
        try:
            result = await self.core.classmap(request.image, _gsd(request),
                                              _pin(request.target, context.invocation_metadata()))
            tiff = await asyncio.to_thread(classmap_geotiff, result) if request.geotiff else b""
        except GatewayError as exc:
            await context.abort(exc.grpc_status, exc.message)
        return gateway_pb2.ClassMapResponse(
            model=result.model, version=result.version, class_names=list(result.class_names),
            scene=_scene(result.summary), classes=result.classmap.classes.ravel().tolist(),
            confidence=result.classmap.confidence.ravel().tolist(), geotiff=tiff, request_id=result.request_id)


async def start_grpc_server(core: GatewayCore, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", core.settings.max_body_bytes),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    add_gateway_service(GatewayServicer(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)  # grpcurl
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
