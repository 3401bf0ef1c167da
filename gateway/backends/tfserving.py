"""TensorFlow Serving over gRPC (PredictionService.Predict, ModelService): no TensorFlow import anywhere here."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from gateway.backends.base import (
    GRADCAM,
    GRADCAM_MULTILAYER,
    STAGE_OUTPUTS,
    Backend,
    Explanation,
    ModelConfig,
    Prediction,
    Target,
    explanation_from,
    load_failed,
)
from gateway.backends.tensors import from_tensor_proto, to_tensor_proto
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    Conflict,
    DeadlineExceeded,
    GatewayError,
    InvalidParameter,
    NotFound,
    Overloaded,
)
from gateway.protos import get_model_metadata_pb2, model_management_pb2, model_pb2, predict_pb2, services_pb2_grpc

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # the 4 MiB default breaks a Grad-CAM batch
OUTPUTS = {
    GRADCAM: (*STAGE_OUTPUTS[0], "probabilities", "class_index"),
    GRADCAM_MULTILAYER: (*STAGE_OUTPUTS[0], *STAGE_OUTPUTS[1], "probabilities", "class_index"),
}
_STATE_NAMES = model_management_pb2.ModelVersionStatus.State.Name
_ERRORS: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
    # our own cancellations raise asyncio.CancelledError, so a CANCELLED status is the server's: TF Serving shutting
    # down cancels its in-flight calls (seen as CANCELLED or UNAVAILABLE, depending on which frame arrives first)
    grpc.StatusCode.CANCELLED: BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidParameter,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
}


def model_spec(target: Target, signature: str) -> model_pb2.ModelSpec:
    """Always name a version or a label: without either TF Serving picks the latest, which flips mid-rollout."""
    spec = model_pb2.ModelSpec(name=target.model, signature_name=signature)
    if target.label:
        spec.version_label = target.label
    else:
        spec.version.value = int(target.version)
    return spec


def model_server_config(configs: list[ModelConfig], base_path: str) -> model_management_pb2.ModelServerConfig:
    server = model_management_pb2.ModelServerConfig()
    for c in configs:
        entry = server.model_config_list.config.add(
            name=c.name, base_path=f"{base_path.rstrip('/')}/{c.name}", model_platform="tensorflow"
        )
        entry.model_version_policy.specific.versions.extend(sorted(c.versions))
        entry.version_labels.update(c.labels)
    return server


class TFServingBackend(Backend):
    def __init__(self, models_dir, address: str, base_path: str = "/models"):
        super().__init__(models_dir)
        self.address = address
        self.base_path = base_path
        self._channel: grpc.aio.Channel | None = None
        self._signatures: dict[tuple[str, int], frozenset[str]] = {}  # a version's SavedModel never changes

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._channel = grpc.aio.insecure_channel(self.address, options=options)
        self._predict = services_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = services_pb2_grpc.ModelServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=1.0)

    async def _call(self, method, request, timeout: float):
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            kind = _ERRORS.get(exc.code(), BackendError)
            detail = exc.details() or exc.code().name
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "version label" in detail:
                kind = NotFound  # a label moved or removed mid-rollout: the caller may route again
            if kind is BackendUnavailable:
                raise kind(f"TensorFlow Serving at {self.address} is unavailable: {detail}") from exc
            if kind is DeadlineExceeded:
                raise kind(f"TensorFlow Serving did not answer within {timeout:g} s") from exc
            raise kind(f"TensorFlow Serving: {detail}") from exc

    async def predict(self, images: np.ndarray, target: Target, timeout: float) -> Prediction:
        request = predict_pb2.PredictRequest(model_spec=model_spec(target, "serving_default"))
        request.inputs["images"].CopyFrom(to_tensor_proto(images))
        request.output_filter.append("probabilities")
        response = await self._call(self._predict.Predict, request, timeout)
        return Prediction(response.model_spec.version.value, from_tensor_proto(response.outputs["probabilities"]))

    async def explain(self, images: np.ndarray, class_index: np.ndarray, target: Target, timeout: float,
                      signature: str = GRADCAM) -> Explanation:
        request = predict_pb2.PredictRequest(model_spec=model_spec(target, signature))
        request.inputs["images"].CopyFrom(to_tensor_proto(images))
        request.inputs["class_index"].CopyFrom(to_tensor_proto(class_index.astype(np.int32)))
        request.output_filter.extend(OUTPUTS[signature])
        response = await self._call(self._predict.Predict, request, timeout)
        out = {k: from_tensor_proto(response.outputs[k]) for k in OUTPUTS[signature]}
        return explanation_from(response.model_spec.version.value, out)

    async def signatures(self, model: str, version: int) -> frozenset[str]:
        """GetModelMetadata's `signature_def` map (a SignatureDefMap packed in an Any), once per version."""
        key = (model, version)
        if key not in self._signatures:
            spec = model_pb2.ModelSpec(name=model)
            spec.version.value = version
            request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
            response = await self._call(self._predict.GetModelMetadata, request, timeout=5.0)
            packed = response.metadata["signature_def"]
            if not packed.type_url.endswith("/tensorflow.serving.SignatureDefMap"):
                raise BackendError(f"TensorFlow Serving sent {packed.type_url!r} as the signature_def metadata")
            defs = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value).signature_def
            self._signatures[key] = frozenset(k for k in defs if not k.startswith("__"))  # not __saved_model_init_op
        return self._signatures[key]

    async def _statuses(self, model: str) -> dict[int, model_management_pb2.ModelVersionStatus]:
        request = model_management_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=model))
        try:
            response = await self._call(self._models.GetModelStatus, request, timeout=5.0)
        except NotFound:
            return {}
        return {s.version: s for s in response.model_version_status}

    async def version_states(self, model: str) -> dict[int, str]:
        return {v: _STATE_NAMES(s.state) for v, s in (await self._statuses(model)).items()}

    async def apply_config(self, configs: list[ModelConfig], timeout: float) -> None:
        """HandleReloadConfigRequest, then poll GetModelStatus: an OK reload does not mean the version loaded, and a
        version whose load failed ends (END) with the loader's error in its status: stop there, not at the timeout."""
        request = model_management_pb2.ReloadConfigRequest(config=model_server_config(configs, self.base_path))
        response = await self._call(self._models.HandleReloadConfigRequest, request, timeout)
        if response.status.error_code != 0:
            raise Conflict(f"TensorFlow Serving refused the config: {response.status.error_message}")
        deadline = time.monotonic() + timeout
        for config in configs:
            while True:
                statuses = await self._statuses(config.name)
                states = {v: _STATE_NAMES(s.state) for v, s in statuses.items()}
                missing = [v for v in config.versions if states.get(v) != "AVAILABLE"]
                if not missing:
                    break
                failed = [statuses[v] for v in missing if states.get(v) == "END" and statuses[v].status.error_code]
                if failed:
                    raise load_failed(config.name, failed[0].version, failed[0].status.error_message)
                if time.monotonic() > deadline:
                    raise DeadlineExceeded(f"{config.name} versions {missing} not AVAILABLE after {timeout:g} s")
                await asyncio.sleep(0.1)
