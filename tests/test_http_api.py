"""The HTTP API end to end: real uvicorn on a loopback port, the local backend, the tiny model."""

from __future__ import annotations

import base64

import cv2
import httpx
import numpy as np
import pytest

from tests.conftest import encode, make_image


@pytest.fixture(scope="module")
def client(live_gateway):
    with httpx.Client(base_url=live_gateway.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def image():
    return make_image("stripes", np.random.default_rng(1), size=96)


def _error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def test_predict_multipart(client, image):
    r = client.post("/predict", files={"image": ("x.png", encode(image), "image/png")}, params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["version"] == 1 and body["request_id"]
    probs = [p["probability"] for p in body["predictions"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert {p["label"] for p in body["predictions"]} == {"circles", "noise", "stripes"}
    assert r.headers["X-Model-Version"] == "1"


def test_predict_json_batch_matches_single(client, image):
    other = make_image("circles", np.random.default_rng(2))
    instances = [{"b64": base64.b64encode(encode(x, ext)).decode()} for x, ext in
                 ((image, ".png"), (other, ".jpg"), (image, ".bmp"))]
    r = client.post("/predict", json={"instances": instances, "top_k": 2})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and all(len(p) == 2 for p in preds)
    single = client.post("/predict", files={"image": ("x.png", encode(image))}).json()["predictions"]
    assert preds[0][0]["label"] == single[0]["label"]
    assert abs(preds[0][0]["probability"] - single[0]["probability"]) < 1e-5


def test_pinning_unknown_version_or_label_is_404(client, image):
    files = {"image": ("x.png", encode(image))}
    assert client.post("/predict", files=files, params={"version": 1}).json()["version"] == 1
    assert client.post("/predict", files=files, params={"label": "stable"}).json()["version"] == 1
    assert "served: 1" in _error(client.post("/predict", files=files, params={"version": 7}), 404, "not_found")
    _error(client.post("/predict", files=files, params={"label": "canary"}), 404, "not_found")
    _error(client.post("/predict", files=files, params={"model": "nope"}), 404, "not_found")


def test_gradcam_png_overlay_enlarged_to_be_seen(client, image):
    """A small image's overlay is enlarged to at least 256 px (nearest neighbour), keeping its shape."""
    r = client.post("/gradcam", files={"image": ("x.png", encode(image))})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    png = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (256, 256, 3) and image.shape == (96, 96, 3)
    assert r.headers["X-Model-Version"] == "1" and r.headers["X-Class-Label"] in {"circles", "noise", "stripes"}
    assert 0 < float(r.headers["X-Class-Probability"]) <= 1


def test_gradcam_json_and_class_choices(client, image):
    files = {"image": ("x.png", encode(image))}
    ranked = client.post("/predict", files=files).json()["predictions"]
    for params, expected in (({}, ranked[0]), ({"rank": 2}, ranked[1]), ({"class": ranked[2]["label"]}, ranked[2]),
                             ({"class": str(ranked[1]["index"])}, ranked[1])):
        r = client.post("/gradcam", files=files, params={**params, "method": "layercam-fused"},
                        headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == expected["label"] and body["index"] == expected["index"]
        assert abs(body["probability"] - expected["probability"]) < 1e-5
        heat = np.array(body["heatmap"])
        assert heat.shape == (16, 16) and heat.min() >= 0 and heat.max() <= 1
        png = cv2.imdecode(np.frombuffer(base64.b64decode(body["png_base64"]), np.uint8), cv2.IMREAD_COLOR)
        assert png.shape == (256, 256, 3)


def test_gradcam_output_size_is_capped(client):
    big = cv2.resize(make_image("circles", np.random.default_rng(3)), (640, 320))
    r = client.post("/gradcam", files={"image": ("x.jpg", encode(big, ".jpg"))}, params={"max_side": 200})
    png = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[:2] == (100, 200)


@pytest.mark.parametrize("params", [{"method": "magic"}, {"colormap": "rainbow-unicorn"}, {"alpha": 2},
                                    {"class": "volcano"}, {"class": "7"}, {"rank": 9}, {"rank": 1, "class": "noise"}])
def test_gradcam_bad_parameters_are_422(client, image, params):
    _error(client.post("/gradcam", files={"image": ("x.png", encode(image))}, params=params), 422,
           "invalid_parameter")


def test_client_mistakes_get_clear_json_errors(client, image):
    _error(client.post("/predict", files={"image": ("x.bin", b"definitely not an image")}), 400, "invalid_image")
    _error(client.post("/predict", files={"image": ("x.pdf", b"%PDF-1.7 ...")}), 415, "unsupported_media_type")
    _error(client.post("/predict", content=b"hello", headers={"content-type": "text/plain"}), 415,
           "unsupported_media_type")
    _error(client.post("/predict"), 400, "invalid_image")
    assert "'image'" in _error(client.post("/predict", files={"picture": ("x.png", encode(image))}), 422,
                               "invalid_parameter")
    _error(client.post("/predict", json={"instances": [{"b64": "***"}]}), 400, "bad_request")
    _error(client.post("/predict", json={"instances": []}), 422, "invalid_parameter")
    _error(client.post("/predict", files={"image": ("x.png", encode(image))}, params={"top_k": 10**6}), 422,
           "invalid_parameter")
    _error(client.post("/predict", files={"image": ("x.png", encode(image))}, params={"version": "one"}), 422,
           "invalid_parameter")
    truncated = encode(image, ".png")[:200]
    _error(client.post("/predict", files={"image": ("x.png", truncated)}), 400, "invalid_image")


def test_body_over_the_limit_is_413(client):
    """The refusal says what to do: a raw 2048 px GeoTIFF (12.6 MB) passes the default 10 MiB limit."""
    response = client.post("/predict", files={"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 3_000_000)})
    message = _error(response, 413, "payload_too_large")
    assert "compressed" in message and "GATEWAY_MAX_BODY_BYTES" in message and "gateway scene" in message


def test_models_health_ready_metrics(client, image):
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "tiny" and models[0]["default"]
    v1 = models[0]["versions"][0]
    assert v1["version"] == 1 and v1["state"] == "AVAILABLE" and v1["labels"] == ["stable"]
    assert v1["class_names"] == ["circles", "noise", "stripes"] and v1["input_size"] == [32, 32]
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/predict", files={"image": ("x.png", encode(image))})
    text = client.get("/metrics").text
    assert 'gateway_requests_total{model="tiny",route="predict",status="ok",version="1"}' in text
    assert "gateway_request_latency_seconds_bucket" in text


def test_openapi_documents_both_body_types(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert "PredictBatchRequest" in spec["components"]["schemas"]
    assert "image/png" in spec["paths"]["/gradcam"]["post"]["responses"]["200"]["content"]


def test_a_version_without_the_multilayer_signature_is_404_for_the_fused_method(client, live_gateway, image):
    """A SavedModel exported before `gradcam_multilayer` existed still serves every single-stage method; the fused
    one gets a 404 that names what is missing, not a 500."""
    from types import SimpleNamespace

    backend = live_gateway.app.state.core.backend
    key = ("tiny", 1)
    full = backend._loaded[key]
    backend._loaded[key] = SimpleNamespace(signatures={k: v for k, v in full.signatures.items()
                                                       if k != "gradcam_multilayer"})
    try:
        files = {"image": ("x.png", encode(image))}
        assert client.post("/gradcam", files=files).status_code == 200
        message = _error(client.post("/gradcam", files=files, params={"method": "layercam-fused"}), 404, "not_found")
        assert "gradcam_multilayer" in message
    finally:
        backend._loaded[key] = full
    assert client.post("/gradcam", files=files, params={"method": "layercam-fused"}).status_code == 200
