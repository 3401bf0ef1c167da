"""One validation for both front doors (issue 14, item 3; issue 15, items 3-4): class names and indices in ASCII digits
only, names, routing keys, methods and their alias, strict types, one wording for range errors, short excerpts in
messages, form fields as parameters, unknown fields refused, malformed protobuf and server reflection over gRPC."""

from __future__ import annotations

import base64
import re

import grpc
import httpx
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gateway import validation
from gateway.errors import InvalidParameter
from gateway.protos import gateway_pb2, gateway_pb2_grpc
from tests.conftest import encode, make_image

IMAGE = encode(make_image("stripes", np.random.default_rng(11)))
B64 = base64.b64encode(IMAGE).decode()
MB = 1_000_000


@pytest.fixture(scope="module")
def http(live_gateway):
    with httpx.Client(base_url=live_gateway.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(live_gateway):
    with grpc.insecure_channel(f"127.0.0.1:{live_gateway.app.state.grpc_port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel), channel


def refused(response: httpx.Response, status: int = 422, code: str = "invalid_parameter") -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


def grpc_refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    assert err.value.code() == code, err.value
    return err.value.details()


def gradcam(http: httpx.Client, **params) -> httpx.Response:
    return http.post("/gradcam", files={"image": ("x.png", IMAGE)}, params=params)


# --------------------------------------------------------------------------------------- the rules themselves


@pytest.mark.parametrize("value", ["²", "①", "٣", "--1", "1_0", " 1", "+1", "1.0", "", "x" * 129, "a\x00b"])
def test_only_ascii_digits_are_an_index(value):
    """str.isdigit() accepts "²" and "①" (int() then raises: a 500 before) and int() reads "٣" as 3."""
    try:
        label, index = validation.parse_class(value)
    except InvalidParameter:
        return  # refused outright: fine
    assert index is None and label == value


def test_ascii_indices_and_negative_ones():
    assert validation.parse_class("7") == (None, 7)
    assert validation.parse_class("Forest") == ("Forest", None)
    with pytest.raises(InvalidParameter, match="class index must be at least 0, got '-1'"):
        validation.parse_class("-1")


def test_messages_quote_a_short_excerpt():
    for check in (validation.check_label, validation.check_model, validation.check_routing_key,
                  validation.check_class_label, validation.validate_method, validation.validate_colormap):
        with pytest.raises(InvalidParameter) as err:
            check("é" * MB)
        assert len(err.value.message) < 400 and "1000000 characters" in err.value.message


def test_one_wording_for_ranges():
    for call, text in [(lambda: validation.check_top_k(0, 100), "top_k must be between 1 and 100, got 0"),
                       (lambda: validation.check_alpha(float("nan")), "alpha must be between 0 and 1, got nan"),
                       (lambda: validation.check_max_side(8), "max_side must be at least 16, got 8"),
                       (lambda: validation.check_int("top_k", True, 1), "top_k must be an integer, got True")]:
        with pytest.raises(InvalidParameter) as err:
            call()
        assert err.value.message == text


def test_method_aliases():
    assert validation.validate_method("gradcampp") == "gradcam++"
    assert validation.validate_method("gradcam  ") == "gradcam++"  # `gradcam++` in a query string, unencoded
    assert validation.validate_method("gradcam++") == "gradcam++"
    for wrong in ("gradcam ", "GRADCAM", "gradcam+", "gradcampp "):
        with pytest.raises(InvalidParameter):
            validation.validate_method(wrong)


# ---------------------------------------------------------------------------------------------- HTTP door


@pytest.mark.parametrize("raw", ["%C2%B2", "%E2%91%A0", "--1", "%D9%A3", "-1", "1e3", "%00"])
def test_hostile_class_values_are_422_not_500(http, raw):
    r = http.post(f"/gradcam?class={raw}", files={"image": ("x.png", IMAGE)})
    refused(r)


@pytest.mark.parametrize("query", ["top_k=1.0", "top_k=%2B3", "top_k=%203", "top_k=1_0", "top_k=%D9%A3",
                                   "top_k=true", "version=1.0", "version=%D9%A1", "version=0x1"])
def test_integers_in_the_query_are_ascii_digits(http, query):
    refused(http.post(f"/predict?{query}", files={"image": ("x.png", IMAGE)}))


@pytest.mark.parametrize("field", [{"top_k": True}, {"top_k": "3"}, {"top_k": 3.0}, {"version": 1.0},
                                   {"version": "1"}, {"version": True}, {"label": 5}, {"extra": 1}])
def test_json_is_strict(http, field):
    refused(http.post("/predict", json={"instances": [{"b64": B64}], **field}))


def test_json_accepts_what_is_right(http):
    r = http.post("/predict", json={"instances": [{"b64": B64}], "top_k": 2, "version": 1})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]) == 2


def test_range_errors_read_the_same_from_every_door(http, stub):
    grpc_stub, _ = stub
    want = "top_k must be between 1 and 100, got {}"
    assert refused(http.post("/predict?top_k=0", files={"image": ("x.png", IMAGE)})) == want.format(0)
    assert refused(http.post("/predict?top_k=101", files={"image": ("x.png", IMAGE)})) == want.format(101)
    assert refused(http.post("/predict", json={"instances": [{"b64": B64}], "top_k": 0})) == want.format(0)
    assert grpc_refused(grpc_stub.Predict, gateway_pb2.PredictRequest(images=[IMAGE], top_k=-1)) == want.format(-1)


def test_long_values_are_refused_with_a_short_message(http):
    for params in ({"label": "x" * 20_000}, {"model": "m" * 20_000}, {"class": "c" * 20_000},
                   {"method": "g" * 20_000}, {"colormap": "t" * 20_000}):
        message = refused(gradcam(http, **params))
        assert len(message) < 400, params.keys()
    message = refused(http.post("/predict", files={"image": ("x.png", IMAGE)}, headers={"X-Routing-Key": "k" * 8000}))
    assert len(message) < 400
    refused(http.post("/predict", files={"image": ("x.png", IMAGE)}, headers={"X-Routing-Key": b"k\xe9"}))


def test_unknown_query_parameters_are_refused(http):
    assert "methd: unknown parameter" in refused(gradcam(http, methd="gradcampp"))
    refused(http.post("/predict?topk=3", files={"image": ("x.png", IMAGE)}))


def test_gradcampp_needs_no_encoding(http):
    for query in ("method=gradcampp", "method=gradcam++", "method=gradcam%2B%2B"):
        r = http.post(f"/gradcam?{query}", files={"image": ("x.png", IMAGE)})
        assert r.status_code == 200 and r.headers["x-cam-method"] == "gradcam++", (query, r.text)


def test_parameters_as_multipart_form_fields(http):
    r = http.post("/gradcam", files={"image": ("x.png", IMAGE)}, data={"method": "gradcam++", "rank": "2"})
    assert r.status_code == 200 and r.headers["x-cam-method"] == "gradcam++", r.text
    top = http.post("/predict", files={"image": ("x.png", IMAGE)}, data={"top_k": "3"}).json()["predictions"]
    assert len(top) == 3 and r.headers["x-class-label"] == top[1]["label"]
    assert "unknown parameter" in refused(http.post("/gradcam", files={"image": ("x.png", IMAGE)},
                                                    data={"methd": "gradcam++"}))
    assert "both in the query" in refused(http.post("/gradcam?method=gradcam", files={"image": ("x.png", IMAGE)},
                                                    data={"method": "layercam"}))
    refused(http.post("/predict", files={"image": ("x.png", IMAGE)}, data={"top_k": "0"}))
    refused(http.post("/predict", files={"image": ("x.png", IMAGE)}, data={"top_k": "٣"}))


def test_gradcam_json_takes_no_top_k(http):
    assert "top_k" in refused(http.post("/gradcam", json={"instances": [{"b64": B64}], "top_k": 3}))


# ---------------------------------------------------------------------------------------------- gRPC door


@pytest.mark.parametrize("target", [dict(label="x" * MB), dict(model="x" * MB), dict(routing_key="k" * MB),
                                    dict(model="../etc"), dict(label="stable;rm"), dict(version=-3),
                                    dict(routing_key="k\n")])
def test_grpc_names_and_keys_follow_the_http_rules(stub, target):
    grpc_stub, _ = stub
    details = grpc_refused(grpc_stub.Predict, gateway_pb2.PredictRequest(images=[IMAGE],
                                                                        target=gateway_pb2.Target(**target)))
    assert len(details) < 400


def test_grpc_routing_key_metadata_is_validated(stub):
    grpc_stub, _ = stub
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.Predict(gateway_pb2.PredictRequest(images=[IMAGE]), metadata=[("x-routing-key", "k" * 300)],
                          timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("fields", [dict(class_label="²"), dict(class_label="x" * MB), dict(method="g" * MB),
                                    dict(colormap="c" * MB), dict(max_side=8), dict(alpha=-0.5)])
def test_grpc_gradcam_options_follow_the_http_rules(stub, fields):
    grpc_stub, _ = stub
    details = grpc_refused(grpc_stub.GradCam, gateway_pb2.GradCamRequest(image=IMAGE, **fields))
    assert len(details) < 400


def test_grpc_method_alias(stub):
    grpc_stub, _ = stub
    reply = grpc_stub.GradCam(gateway_pb2.GradCamRequest(image=IMAGE, method="gradcampp"), timeout=30)
    assert reply.method == "gradcam++"


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x0a\xff", b"\x12\x05abc", b"\x08"])
@pytest.mark.parametrize("rpc", ["Predict", "GradCam"])
def test_malformed_protobuf_is_invalid_argument(stub, rpc, data):
    _, channel = stub
    call = channel.unary_unary(f"/scenecam.v1.Gateway/{rpc}")  # raw bytes in, raw bytes out
    with pytest.raises(grpc.RpcError) as err:
        call(data, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "not a valid scenecam.v1." in err.value.details() and "Error" not in err.value.details()


def test_server_reflection_lists_the_services(stub):
    _, channel = stub
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"scenecam.v1.Gateway", "grpc.health.v1.Health"} <= services
    described = database.FindFileContainingSymbol("scenecam.v1.Gateway")
    assert described.package == "scenecam.v1"
    assert {"Predict", "GradCam"} <= {m.name for s in described.service for m in s.method}


def test_grpc_answers_are_counted(http, stub):
    grpc_stub, channel = stub

    def count(code: str) -> float:
        pattern = rf'^gateway_grpc_responses_total\{{code="{code}",method="Predict"\}} (\S+)$'
        return sum(float(v) for v in re.findall(pattern, http.get("/metrics").text, re.MULTILINE))

    ok, invalid = count("OK"), count("INVALID_ARGUMENT")
    grpc_stub.Predict(gateway_pb2.PredictRequest(images=[IMAGE]), timeout=30)
    with pytest.raises(grpc.RpcError):
        channel.unary_unary("/scenecam.v1.Gateway/Predict")(b"\xff\xff", timeout=30)
    assert (count("OK"), count("INVALID_ARGUMENT")) == (ok + 1, invalid + 1)


@pytest.mark.parametrize("query", ["max_side=-5", "max_side=8", "max_side=1.0", "alpha=2", "alpha=nan", "overlay=2",
                                   "gsd=10"])
def test_classmap_options_follow_the_same_rules(http, query):
    refused(http.post(f"/classmap?{query}", files={"image": ("x.png", IMAGE)}))
