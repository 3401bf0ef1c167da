"""The gateway's own gRPC API end to end, on the same process and core as HTTP."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.protos import gateway_pb2, gateway_pb2_grpc
from tests.conftest import encode, make_image, png_declaring


@pytest.fixture(scope="module")
def channel(live_gateway):
    port = live_gateway.app.state.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


def test_predict_matches_http(channel, live_gateway):
    image = encode(make_image("noise", np.random.default_rng(4)))
    stub = gateway_pb2_grpc.GatewayStub(channel)
    reply = stub.Predict(gateway_pb2.PredictRequest(images=[image, image], top_k=2), timeout=30)
    assert reply.model == "tiny" and reply.version == 1 and reply.request_id
    assert len(reply.results) == 2 and len(reply.results[0].predictions) == 2
    http = httpx.post(f"{live_gateway.url}/predict", files={"image": ("x.png", image)}, params={"top_k": 2}).json()
    assert [p.label for p in reply.results[0].predictions] == [p["label"] for p in http["predictions"]]
    assert reply.results[0].predictions[0].probability == pytest.approx(http["predictions"][0]["probability"],
                                                                        abs=1e-6)


def test_gradcam_by_rank(channel):
    image = encode(make_image("circles", np.random.default_rng(5), size=40))
    stub = gateway_pb2_grpc.GatewayStub(channel)
    top = stub.Predict(gateway_pb2.PredictRequest(images=[image], top_k=3), timeout=30).results[0].predictions
    reply = stub.GradCam(gateway_pb2.GradCamRequest(image=image, rank=2, method="gradcam++"), timeout=30)
    assert reply.label == top[1].label and reply.index == top[1].index and reply.method == "gradcam++"
    heat = np.asarray(reply.heatmap).reshape(reply.heatmap_height, reply.heatmap_width)
    assert heat.shape == (8, 8) and heat.min() >= 0 and heat.max() <= 1
    assert reply.png.startswith(b"\x89PNG")


def test_errors_map_to_grpc_status_codes(channel):
    stub = gateway_pb2_grpc.GatewayStub(channel)
    cases = [
        (gateway_pb2.PredictRequest(images=[b"junk"]), grpc.StatusCode.INVALID_ARGUMENT),
        (gateway_pb2.PredictRequest(images=[]), grpc.StatusCode.INVALID_ARGUMENT),
        (gateway_pb2.PredictRequest(images=[encode(make_image("noise", np.random.default_rng(0)))],
                                    target=gateway_pb2.Target(version=42)), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=30)
        assert err.value.code() == code and err.value.details()


GOOD = encode(make_image("noise", np.random.default_rng(7)))
HOSTILE_GRADCAM = {
    "unknown method": (dict(method="nope"), grpc.StatusCode.INVALID_ARGUMENT),
    "method with NUL": (dict(method="gradcam\x00"), grpc.StatusCode.INVALID_ARGUMENT),
    "unknown colormap": (dict(colormap="rainbow"), grpc.StatusCode.INVALID_ARGUMENT),
    "alpha NaN": (dict(alpha=float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
    "alpha above 1": (dict(alpha=1.5), grpc.StatusCode.INVALID_ARGUMENT),
    "negative max_side": (dict(max_side=-5), grpc.StatusCode.INVALID_ARGUMENT),
    "rank 0": (dict(rank=0), grpc.StatusCode.INVALID_ARGUMENT),
    "rank past the classes": (dict(rank=99), grpc.StatusCode.INVALID_ARGUMENT),
    "negative class index": (dict(class_index=-1), grpc.StatusCode.INVALID_ARGUMENT),
    "class index past the classes": (dict(class_index=2**31 - 1), grpc.StatusCode.INVALID_ARGUMENT),
    "unknown class label": (dict(class_label="x" * 200), grpc.StatusCode.INVALID_ARGUMENT),
    "class and rank together": (dict(class_index=0, rank=1), grpc.StatusCode.INVALID_ARGUMENT),
    "empty image": (dict(image=b""), grpc.StatusCode.INVALID_ARGUMENT),
    "truncated image": (dict(image=GOOD[: len(GOOD) // 2]), grpc.StatusCode.INVALID_ARGUMENT),
    "decompression bomb": (dict(image=png_declaring(100_000, 100_000)), grpc.StatusCode.RESOURCE_EXHAUSTED),
    "unknown version": (dict(target=gateway_pb2.Target(version=42)), grpc.StatusCode.NOT_FOUND),
    "unknown label": (dict(target=gateway_pb2.Target(label="nope")), grpc.StatusCode.NOT_FOUND),
    "message over the size limit": (dict(image=b"\0" * 3_000_000), grpc.StatusCode.RESOURCE_EXHAUSTED),
}


@pytest.mark.parametrize("case", list(HOSTILE_GRADCAM))
def test_hostile_gradcam_requests_get_a_status_not_a_crash(channel, case):
    """The gRPC door's own share of the hostile-input suite: every bad field is a named status with details."""
    fields, code = HOSTILE_GRADCAM[case]
    with pytest.raises(grpc.RpcError) as err:
        gateway_pb2_grpc.GatewayStub(channel).GradCam(gateway_pb2.GradCamRequest(**{"image": GOOD, **fields}),
                                                      timeout=30)
    assert err.value.code() == code and err.value.details(), err.value


@pytest.mark.parametrize("fields", [dict(top_k=-1), dict(top_k=2**31 - 1), dict(images=[b"x"] * 1000),
                                    dict(images=[GOOD, b"junk"])])
def test_hostile_predict_requests_are_invalid_argument(channel, fields):
    with pytest.raises(grpc.RpcError) as err:
        gateway_pb2_grpc.GatewayStub(channel).Predict(gateway_pb2.PredictRequest(**{"images": [GOOD], **fields}),
                                                      timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details(), err.value


def test_the_server_still_answers_after_the_hostile_requests(channel):
    reply = gateway_pb2_grpc.GatewayStub(channel).Predict(gateway_pb2.PredictRequest(images=[GOOD]), timeout=30)
    assert reply.results[0].predictions


def test_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "scenecam.v1.Gateway"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
