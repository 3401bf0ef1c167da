"""The TF Serving stand-in follows TensorFlow Serving's rules, checked with the official stubs only."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import TINY_CLASSES, make_image
from tests.tfserving_standin import AVAILABLE, END, LOADING, START, UNLOADING, StandInServer, load_servable

pytestmark = pytest.mark.slow
Models = dict[str, tuple[list[int], dict[str, int]]]  # name -> (specific versions, labels); all at /models/tiny


@pytest.fixture(scope="module")
def repo(tiny_export: Path, tmp_path_factory) -> Path:
    """A models dir with tiny versions 1 and 2 (same weights: these tests are about the protocol)."""
    root = tmp_path_factory.mktemp("tfs_models")
    for version in (1, 2):
        shutil.copytree(tiny_export, root / "tiny" / str(version))
    return root


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([make_image(kind, rng) for kind in TINY_CLASSES])


def config_proto(models: Models) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name, (versions, labels) in models.items():
        entry = config.model_config_list.config.add(name=name, base_path="/models/tiny", model_platform="tensorflow")
        entry.model_version_policy.specific.versions.extend(versions)
        entry.version_labels.update(labels)
    return config


@pytest.fixture
def make_server(repo: Path, tmp_path: Path) -> Iterator[Callable[..., StandInServer]]:
    """Start stand-ins on a models.config written from `models`; all are stopped at teardown."""
    started: list[StandInServer] = []

    def make(models: Models, **options) -> StandInServer:
        path = tmp_path / "models.config"
        path.write_text(text_format.MessageToString(config_proto(models)))
        server = StandInServer(path, path_map={"/models": str(repo)}, **options)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@dataclass
class Client:
    channel: grpc.Channel
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub

    def reload(self, models: Models) -> model_management_pb2.ReloadConfigResponse:
        request = model_management_pb2.ReloadConfigRequest(config=config_proto(models))
        return self.models.HandleReloadConfigRequest(request, timeout=30)

    def states(self, name: str = "tiny") -> dict[int, int]:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=name))
        response = self.models.GetModelStatus(request, timeout=5)
        return {s.version: s.state for s in response.model_version_status}

    def wait_state(self, version: int, state: int, timeout: float = 15.0, name: str = "tiny") -> list[int]:
        """Poll GetModelStatus like a client must; return the states seen for `version` on the way."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.states(name).get(version)
            if not seen or seen[-1] != current:
                seen.append(current)
            if current == state:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"version {version} never reached state {state}; saw {seen}")


@pytest.fixture
def connect() -> Iterator[Callable[[StandInServer], Client]]:
    channels: list[grpc.Channel] = []

    def open_client(server: StandInServer) -> Client:
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        channel = grpc.insecure_channel(server.address, options=options)
        channels.append(channel)
        return Client(channel, prediction_service_pb2_grpc.PredictionServiceStub(channel),
                      model_service_pb2_grpc.ModelServiceStub(channel))

    yield open_client
    for channel in channels:
        channel.close()


def predict_request(images: np.ndarray, *, name: str = "tiny", version: int | None = None, label: str = "",
                    signature: str = "", class_index: list[int] | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    if class_index is not None:
        request.inputs["class_index"].CopyFrom(tf.make_tensor_proto(np.array(class_index, np.int32)))
    return request


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def as_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    return tf.make_ndarray(proto)


# ---- config and labels ---------------------------------------------------------------------------------------------


def test_startup_labels_need_the_flag(make_server):
    with pytest.raises(RuntimeError, match="FAILED_PRECONDITION: Request to assign label to version 1"):
        make_server({"tiny": ([1], {"stable": 1})})
    server = make_server({"tiny": ([1], {"stable": 1})}, allow_version_labels_for_unavailable_models=True)
    assert server.version_states("tiny") == {1: AVAILABLE}


def test_reload_replaces_the_whole_config(make_server, connect, images):
    server = make_server({"tiny": ([1, 2], {}), "tiny_b": ([1], {})})
    client = connect(server)
    assert client.states("tiny") == {2: AVAILABLE, 1: AVAILABLE}  # highest version first, as the real monitor

    response = client.reload({"tiny": ([2], {}), "tiny_c": ([1], {})})
    assert response.status.error_code == 0
    assert client.states("tiny_c") == {1: AVAILABLE}  # a new model is awaited by the reload itself
    client.wait_state(1, END)
    assert client.states("tiny") == {2: AVAILABLE, 1: END}
    assert client.states("tiny_b") == {1: END}  # left out -> unloaded, but the monitor remembers it

    err = rpc_error(lambda: client.predict.Predict(predict_request(images, name="tiny_b"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "Latest(tiny_b)" in err.details()
    err = rpc_error(lambda: client.predict.Predict(predict_request(images, version=1), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "Specific(tiny, 1)" in err.details()
    assert client.predict.Predict(predict_request(images), timeout=10).model_spec.version.value == 2


def test_label_onto_unloaded_version_is_refused_and_config_kept(make_server, connect, images):
    server = make_server({"tiny": ([1], {"stable": 1})}, allow_version_labels_for_unavailable_models=True)
    client = connect(server)

    err = rpc_error(lambda: client.reload({"tiny": ([1, 2], {"stable": 2})}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 2 of model tiny, which is not currently available" in err.details()
    time.sleep(0.3)
    assert client.states() == {1: AVAILABLE}  # version 2 was not loaded: the previous config is in force
    served = client.predict.Predict(predict_request(images, label="stable"), timeout=10)
    assert served.model_spec.version.value == 1

    # The supported way: list both versions, wait for the new one, then move the label.
    assert client.reload({"tiny": ([1, 2], {"stable": 1})}).status.error_code == 0
    client.wait_state(2, AVAILABLE)
    assert client.reload({"tiny": ([1, 2], {"stable": 2})}).status.error_code == 0
    served = client.predict.Predict(predict_request(images, label="stable"), timeout=10)
    assert served.model_spec.version.value == 2


def test_allow_flag_relaxes_only_labels_not_in_use(make_server, connect):
    server = make_server({"tiny": ([1], {"stable": 1})}, allow_version_labels_for_unavailable_models=True,
                         load_delay_s=0.5)
    client = connect(server)
    assert client.reload({"tiny": ([1, 2], {"stable": 1, "canary": 2})}).status.error_code == 0  # new label: allowed
    err = rpc_error(lambda: client.reload({"tiny": ([1, 2], {"stable": 2, "canary": 2})}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # moving a label in use onto a loading version: refused


def test_reload_error_in_body_option(make_server, connect):
    server = make_server({"tiny": ([1], {})}, reload_errors_in_body=True)
    response = connect(server).reload({"tiny": ([1, 2], {"stable": 2})})
    assert response.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "not currently available" in response.status.error_message


def test_status_polling_loading_then_available(make_server, connect, images):
    server = make_server({"tiny": ([1], {})}, load_delay_s=1.0, unload_delay_s=0.5)
    client = connect(server)
    assert client.reload({"tiny": ([2], {})}).status.error_code == 0  # OK does not mean loaded
    assert client.states()[2] in (START, LOADING)
    assert client.states()[1] == AVAILABLE  # availability-preserving: the old version serves meanwhile
    assert client.predict.Predict(predict_request(images), timeout=10).model_spec.version.value == 1

    seen = client.wait_state(2, AVAILABLE)
    assert LOADING in seen and seen[-1] == AVAILABLE
    assert UNLOADING in client.wait_state(1, END)
    assert client.predict.Predict(predict_request(images), timeout=10).model_spec.version.value == 2

    status = client.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="tiny", version={"value": 2})), timeout=5)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [(2, AVAILABLE, 0)]
    for spec in (model_pb2.ModelSpec(name="nope"), model_pb2.ModelSpec(name="tiny", version={"value": 7})):
        err = rpc_error(lambda s=spec: client.models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=s), timeout=5))
        assert err.code() == grpc.StatusCode.NOT_FOUND


def test_a_version_that_fails_to_load_ends_with_its_error_and_the_old_one_keeps_serving(make_server, connect,
                                                                                         images, repo):
    """An existing model's reload answers OK; the broken version then reports END with the loader's error in its
    status (what a client polls for), and stays aspired, so the old version is never unloaded."""
    broken = repo / "tiny" / "3"
    shutil.copytree(repo / "tiny" / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    try:
        client = connect(make_server({"tiny": ([1], {})}))
        assert client.reload({"tiny": ([1, 3], {})}).status.error_code == 0
        assert client.wait_state(3, END)[-1] == END
        status = client.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="tiny", version={"value": 3})), timeout=5).model_version_status[0]
        assert status.status.error_code != 0 and status.status.error_message
        assert client.states()[1] == AVAILABLE
        assert client.predict.Predict(predict_request(images), timeout=10).model_spec.version.value == 1
    finally:
        shutil.rmtree(broken)


# ---- predict -------------------------------------------------------------------------------------------------------


def test_predict_encodes_float_val_by_default_and_reports_the_version(make_server, connect, images, repo):
    client = connect(make_server({"tiny": ([1, 2], {})}))
    response = client.predict.Predict(predict_request(images, version=1), timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("tiny", 1)
    assert response.model_spec.signature_name == "serving_default"
    probs = response.outputs["probabilities"]
    assert probs.dtype == types_pb2.DT_FLOAT and not probs.tensor_content and len(probs.float_val) == 9
    assert [d.size for d in probs.tensor_shape.dim] == [3, 3]
    expected = load_servable(repo / "tiny" / "1").module.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(np.asarray(probs.float_val).reshape(3, 3), expected["probabilities"].numpy(), 1e-6)
    assert set(response.outputs) == {"probabilities", "logits"}
    assert client.predict.Predict(predict_request(images), timeout=10).model_spec.version.value == 2  # latest


def test_predict_typed_val_inputs_output_filter_and_tensor_content(make_server, connect, images):
    client = connect(make_server({"tiny": ([1], {})}, tensor_content=True))
    typed = predict_request(images)
    proto = typed.inputs["images"]
    proto.Clear()
    proto.dtype = types_pb2.DT_UINT8
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in images.shape]))
    proto.int_val.extend(images.ravel().tolist())
    typed.output_filter.append("logits")

    from_vals = client.predict.Predict(typed, timeout=10)
    from_content = client.predict.Predict(predict_request(images), timeout=10)
    assert set(from_vals.outputs) == {"logits"}
    logits = from_vals.outputs["logits"]
    assert logits.tensor_content and not logits.float_val  # --enable_serialization_as_tensor_content
    np.testing.assert_array_equal(as_array(logits), as_array(from_content.outputs["logits"]))


def test_gradcam_signature(make_server, connect, images):
    client = connect(make_server({"tiny": ([1], {})}))
    response = client.predict.Predict(
        predict_request(images, signature="gradcam", class_index=[-1, 0, 2]), timeout=10)
    assert response.model_spec.signature_name == "gradcam"
    assert as_array(response.outputs["activations"]).shape == (3, 8, 8, 16)
    assert set(response.outputs) == {"activations", "gradients", "probabilities", "class_index"}
    chosen = response.outputs["class_index"]
    assert chosen.dtype == types_pb2.DT_INT32 and list(chosen.int_val)[1:] == [0, 2]
    multi = client.predict.Predict(
        predict_request(images, signature="gradcam_multilayer", class_index=[-1, 0, 2]), timeout=10)
    assert as_array(multi.outputs["gradients_hires"]).shape == (3, 16, 16, 8)


def test_predict_errors(make_server, connect, images):
    client = connect(make_server({"tiny": ([1], {"stable": 1})}, allow_version_labels_for_unavailable_models=True))

    def code(request: predict_pb2.PredictRequest) -> grpc.StatusCode:
        return rpc_error(lambda: client.predict.Predict(request, timeout=10)).code()

    assert code(predict_request(images, name="nope")) == grpc.StatusCode.NOT_FOUND
    assert code(predict_request(images, version=9)) == grpc.StatusCode.NOT_FOUND
    assert code(predict_request(images, label="canary")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(predict_request(images, signature="nope")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code(predict_request(images, signature="gradcam")) == grpc.StatusCode.INVALID_ARGUMENT  # missing input
    assert code(predict_request(images, class_index=[0, 0, 0])) == grpc.StatusCode.INVALID_ARGUMENT  # extra input
    assert code(predict_request(images.astype(np.float32))) == grpc.StatusCode.INVALID_ARGUMENT  # dtype
    out_of_range = predict_request(images, signature="gradcam", class_index=[0, 0, 99])
    assert code(out_of_range) == grpc.StatusCode.INVALID_ARGUMENT  # the model's own assertion
    filtered = predict_request(images)
    filtered.output_filter.append("nope")
    assert code(filtered) == grpc.StatusCode.INVALID_ARGUMENT
    big = np.zeros((1800, 32, 32, 4), np.uint8)  # 7 MiB, over gRPC's 4 MiB default: refused for its shape, not size
    assert code(predict_request(big)) == grpc.StatusCode.INVALID_ARGUMENT


def test_model_metadata(make_server, connect):
    client = connect(make_server({"tiny": ([1, 2], {})}))
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name="tiny"),
                                                             metadata_field=["signature_def"])
    response = client.predict.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "gradcam"} <= set(signatures.signature_def)
    assert signatures.signature_def["gradcam"].inputs["class_index"].dtype == types_pb2.DT_INT32


# ---- faults and outages --------------------------------------------------------------------------------------------


def test_fault_injection_and_call_counts(make_server, connect, images):
    server = make_server({"tiny": ([1, 2], {})})
    client = connect(server)
    server.fail_versions = {1}
    assert rpc_error(lambda: client.predict.Predict(predict_request(images, version=1), timeout=10)).code() == \
        grpc.StatusCode.UNAVAILABLE
    server.fail_code = grpc.StatusCode.INTERNAL
    assert rpc_error(lambda: client.predict.Predict(predict_request(images, version=1), timeout=10)).code() == \
        grpc.StatusCode.INTERNAL
    client.predict.Predict(predict_request(images, version=2), timeout=10)
    server.slow_versions = {2: 0.5}
    assert rpc_error(lambda: client.predict.Predict(predict_request(images, version=2), timeout=0.2)).code() == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    server.slow_versions, server.delay_s = {}, 0.4
    started = time.monotonic()
    client.predict.Predict(predict_request(images, version=2), timeout=10)
    assert time.monotonic() - started >= 0.4
    assert server.calls[1, "serving_default"] == 2 and server.calls[2, "serving_default"] == 3


def test_stop_and_restart_on_the_same_port(make_server, connect, images):
    server = make_server({"tiny": ([1], {})})
    client = connect(server)
    port = server.port
    assert client.reload({"tiny": ([2], {})}).status.error_code == 0
    client.wait_state(2, AVAILABLE)

    server.stop(grace=0)
    assert rpc_error(lambda: client.predict.Predict(predict_request(images), timeout=2)).code() == \
        grpc.StatusCode.UNAVAILABLE
    server.start()
    assert server.port == port
    served = client.predict.Predict(predict_request(images), timeout=10, wait_for_ready=True)
    assert served.model_spec.version.value == 1  # a restart reads the config FILE: RPC reloads are gone
