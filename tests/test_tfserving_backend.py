"""The `tfserving` backend against the TensorFlow Serving stand-in: same answers as `local`, faults mapped right."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.backends.base import GRADCAM, GRADCAM_MULTILAYER, ModelConfig
from gateway.model_config import ConfigStore
from tests.conftest import ROOT, LiveServer, encode, free_port, gateway_settings, make_image
from tests.tfserving_standin import StandInServer

DEFAULT = "serving_default"


def start_standin(models_repo, port: int = 0, **kwargs) -> StandInServer:
    """TF Serving on the repository's runtime config, seeded from the initial one as the deployments do."""
    store = ConfigStore(models_repo, "/models")
    store.seed()
    return StandInServer(store.path, path_map={"/models": str(models_repo)}, port=port,
                         allow_version_labels_for_unavailable_models=True, **kwargs)


def export_without_multilayer(version_dir: Path, out: Path) -> Path:
    """A version as exported before `gradcam_multilayer` existed: the same SavedModel re-saved with its other two
    signatures, and its assets (not its warm-up requests, which name all three)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    tf.saved_model.save(loaded, str(out), signatures={k: loaded.signatures[k] for k in (DEFAULT, GRADCAM)})
    shutil.copytree(version_dir / "assets", out / "assets", dirs_exist_ok=True)
    return out


@pytest.fixture(scope="session")
def single_stage_export(tiny_export, tmp_path_factory) -> Path:
    return export_without_multilayer(tiny_export, tmp_path_factory.mktemp("single") / "1")


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


@pytest.mark.parametrize(("fail_code", "status", "code"), [
    ("UNAVAILABLE", 503, "backend_unavailable"),
    ("CANCELLED", 503, "backend_unavailable"),  # what an in-flight call can get when TF Serving shuts down
    ("UNKNOWN", 502, "backend_error"),  # the server failed the call itself: retrying will not help
    ("RESOURCE_EXHAUSTED", 503, "overloaded"),
])
def test_backend_statuses_map_to_http(models_repo, image, fail_code, status, code):
    import grpc

    with start_standin(models_repo) as standin, tfserving_gateway(models_repo, standin.address) as gw:
        standin.fail_code, standin.fail_versions = grpc.StatusCode[fail_code], {1}
        r = httpx.post(f"{gw.url}/predict", files={"image": ("x.png", encode(image))})
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert (r.headers.get("Retry-After") is not None) == (status == 503)


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


@pytest.fixture(scope="module")
def single_stage_repo(single_stage_export, tmp_path_factory) -> Path:
    """Model `tiny` whose only version (1) has no `gradcam_multilayer` signature."""
    root = tmp_path_factory.mktemp("single-repo")
    shutil.copytree(single_stage_export, root / "tiny" / "1")
    ConfigStore(root, "/models").write([ModelConfig("tiny", (1,), {"stable": 1})])
    return root


def test_a_method_the_version_cannot_serve_is_the_same_404_through_both_backends(single_stage_repo, image):
    """The fused method on a version without `gradcam_multilayer`: one status, code and message whichever backend
    serves it, the signature never called; the other methods answer, and /v1/models says what the version serves."""
    from gateway.app import create_app

    files = {"image": ("x.png", encode(image))}
    fused = {"method": "layercam-fused"}
    answers = {}
    with start_standin(single_stage_repo) as standin, \
            tfserving_gateway(single_stage_repo, standin.address) as remote, \
            LiveServer(create_app(gateway_settings(single_stage_repo))) as local:
        for name, gw in (("local", local), ("tfserving", remote)):
            assert httpx.post(f"{gw.url}/gradcam", files=files).status_code == 200
            assert httpx.post(f"{gw.url}/gradcam", files=files, params={"method": "gradcam++"}).status_code == 200
            r = httpx.post(f"{gw.url}/gradcam", files=files, params=fused)
            answers[name] = (r.status_code, r.json())
            listed = httpx.get(f"{gw.url}/v1/models").json()["models"][0]["versions"][0]
            assert listed["signatures"] == sorted([DEFAULT, GRADCAM]), name
            assert "layercam-fused" not in listed["methods"] and {"gradcam", "gradcam++"} <= set(listed["methods"])
        assert not any(sig == GRADCAM_MULTILAYER for _, sig in standin.calls)
    assert answers["local"] == answers["tfserving"]
    status, body = answers["local"]
    assert status == 404 and body["error"]["code"] == "not_found"
    assert body["error"]["message"] == ("model 'tiny' version 1 cannot serve method 'layercam-fused': it has no "
                                        "'gradcam_multilayer' signature; its methods: " +
                                        ", ".join(listed["methods"]))


def test_models_lists_every_signature_and_method_of_a_full_version(models_repo):
    with start_standin(models_repo) as standin, tfserving_gateway(models_repo, standin.address) as gw:
        listed = httpx.get(f"{gw.url}/v1/models").json()["models"][0]["versions"][0]
    assert listed["signatures"] == sorted([DEFAULT, GRADCAM, GRADCAM_MULTILAYER])
    assert "layercam-fused" in listed["methods"] and "gradcam" in listed["methods"]


def test_signature_metadata_is_wire_compatible_with_tf_serving():
    """Our GetModelMetadata messages parse the official ones (the SignatureDefMap packed in an Any) and back."""
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2 as official

    from gateway.protos import get_model_metadata_pb2 as ours

    signatures = official.SignatureDefMap()
    signatures.signature_def[GRADCAM].CopyFrom(meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict"))
    signatures.signature_def[GRADCAM].inputs["class_index"].name = "serving_gradcam_class_index:0"
    response = official.GetModelMetadataResponse()
    response.model_spec.name = "tiny"
    response.model_spec.version.value = 3
    response.metadata["signature_def"].Pack(signatures)
    parsed = ours.GetModelMetadataResponse.FromString(response.SerializeToString())
    assert parsed.metadata["signature_def"].type_url.endswith("/tensorflow.serving.SignatureDefMap")
    defs = ours.SignatureDefMap.FromString(parsed.metadata["signature_def"].value).signature_def
    assert set(defs) == {GRADCAM} and defs[GRADCAM].inputs["class_index"].name == "serving_gradcam_class_index:0"
    request = ours.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    assert list(official.GetModelMetadataRequest.FromString(request.SerializeToString()).metadata_field) == [
        "signature_def"]
