"""The `tfserving` backend against the TensorFlow Serving stand-in: same answers as `local`, faults mapped right."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, LiveServer, encode, free_port, gateway_settings, make_image
from tests.tfserving_standin import StandInServer


def start_standin(models_repo, port: int = 0, **kwargs) -> StandInServer:
    return StandInServer(models_repo / "models.config", path_map={"/models": str(models_repo)}, port=port,
                         allow_version_labels_for_unavailable_models=True, **kwargs)


def tfserving_gateway(models_repo, address: str, **overrides) -> LiveServer:
    from gateway.app import create_app

    settings = gateway_settings(models_repo, backend="tfserving", tfserving_address=address, **overrides)
    return LiveServer(create_app(settings))


@pytest.fixture(scope="module")
def image():
    return make_image("circles", np.random.default_rng(11), size=48)


@pytest.mark.parametrize("tensor_content", [False, True], ids=["float_val", "tensor_content"])
def test_same_answers_as_local_backend(models_repo, live_gateway, image, tensor_content):
    files = {"image": ("x.png", encode(image))}
    local = httpx.post(f"{live_gateway.url}/predict", files=files).json()
    as_json = {"Accept": "application/json"}
    local_cam = httpx.post(f"{live_gateway.url}/gradcam", files=files, headers=as_json, params={"rank": 2}).json()
    fused = {"method": "layercam-fused"}
    local_fused = httpx.post(f"{live_gateway.url}/gradcam", files=files, headers=as_json, params=fused).json()
    with start_standin(models_repo, tensor_content=tensor_content) as standin, \
            tfserving_gateway(models_repo, standin.address) as gw:
        remote = httpx.post(f"{gw.url}/predict", files=files).json()
        remote_cam = httpx.post(f"{gw.url}/gradcam", files=files, headers=as_json, params={"rank": 2}).json()
        remote_fused = httpx.post(f"{gw.url}/gradcam", files=files, headers=as_json, params=fused).json()
        assert standin.calls[(1, "serving_default")] >= 2 and standin.calls[(1, "gradcam")] == 1
        assert standin.calls[(1, "gradcam_multilayer")] == 1  # only the fused method pays for the second stage
    assert remote["version"] == 1
    assert [p["label"] for p in remote["predictions"]] == [p["label"] for p in local["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in remote["predictions"]],
                               [p["probability"] for p in local["predictions"]], atol=1e-6)
    assert remote_cam["label"] == local_cam["label"]
    np.testing.assert_allclose(remote_cam["heatmap"], local_cam["heatmap"], atol=1e-4)
    assert np.asarray(remote_fused["heatmap"]).shape == (16, 16)
    np.testing.assert_allclose(remote_fused["heatmap"], local_fused["heatmap"], atol=1e-4)


def test_down_at_start_then_recovers_without_restart(models_repo, image):
    port = free_port()
    with tfserving_gateway(models_repo, f"127.0.0.1:{port}", request_timeout_s=3) as gw:
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        r = httpx.post(f"{gw.url}/predict", files={"image": ("x.png", encode(image))})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "backend_unavailable"
        with start_standin(models_repo, port=port):
            deadline = time.monotonic() + 20
            while httpx.get(f"{gw.url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the gateway never became ready"
                time.sleep(0.2)
            r = httpx.post(f"{gw.url}/predict", files={"image": ("x.png", encode(image))})
            assert r.status_code == 200 and r.json()["version"] == 1


def test_slow_backend_is_504(models_repo, image):
    with start_standin(models_repo) as standin, tfserving_gateway(models_repo, standin.address,
                                                                  request_timeout_s=0.5) as gw:
        standin.delay_s = 2.0
        started = time.monotonic()
        r = httpx.post(f"{gw.url}/predict", files={"image": ("x.png", encode(image))}, timeout=10)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert time.monotonic() - started < 1.5


def test_tfserving_mode_never_imports_tensorflow(models_repo):
    code = (
        "import sys; from gateway.app import create_app; from gateway.settings import Settings; "
        f"create_app(Settings(backend='tfserving', models_dir={str(models_repo)!r}, model_name='tiny')); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
