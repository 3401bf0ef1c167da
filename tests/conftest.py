"""Shared fixtures: a small generated dataset and a tiny model trained on it once per session."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "samples"
TINY_CLASSES = ["circles", "stripes", "noise"]


def make_image(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Three visually distinct synthetic 'scenes', so a tiny model learns them within an epoch or two."""
    img = np.full((size, size, 3), rng.integers(40, 90), np.uint8)
    if kind == "circles":
        for _ in range(3):
            cv2.circle(img, tuple(int(v) for v in rng.integers(4, size - 4, 2)), int(rng.integers(3, 7)),
                       (40, 200, 60), -1)
    elif kind == "stripes":
        for y in range(int(rng.integers(0, 4)), size, 6):
            img[y : y + 3] = (200, 60, 40)
    else:
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return img


def write_dataset(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in TINY_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = ".png" if i % 2 else ".jpg"
            cv2.imwrite(str(root / name / f"{i:03d}{ext}"), make_image(name, rng))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "scenes")


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished training run (model.keras, run.json, history.json) of a tiny ResNet on the tiny dataset."""
    from exporter.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=str(tiny_dataset), run_dir=str(run_dir), epochs=8, batch_size=16, input_size=32,
        widths=(8, 16), blocks_per_stage=1, warmup_epochs=0, learning_rate=5e-3, val_fraction=0.15,
        test_fraction=0.15,
    )
    return train(cfg)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    from exporter.evaluate import evaluate
    from exporter.export import export_from_run

    evaluate(tiny_run)
    return export_from_run(tiny_run, None, tmp_path_factory.mktemp("models"), "tiny", None)


@pytest.fixture(scope="session")
def models_repo(tiny_export, tmp_path_factory) -> Path:
    """A model repository like `models/`: model `tiny` version 1 labelled stable, and its models.config."""
    import shutil

    from gateway.backends.base import ModelConfig
    from gateway.model_config import ConfigStore

    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(tiny_export, root / "tiny" / "1")
    ConfigStore(root, "/models").write([ModelConfig("tiny", (1,), {"stable": 1})])
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on a loopback port, in a background thread of the test process."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.port = free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def gateway_settings(models_dir: Path, **overrides):
    from gateway.settings import Settings

    return Settings(**{"models_dir": models_dir, "model_name": "tiny", "grpc_port": 0, **overrides})


@pytest.fixture(scope="module")
def live_gateway(models_repo):
    """The gateway with the local backend, serving the tiny model through real uvicorn."""
    from gateway.app import create_app

    with LiveServer(create_app(gateway_settings(models_repo, max_body_bytes=2_000_000, grpc_port=free_port()))) as s:
        yield s


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, rows: int = 1) -> bytes:
    """A well-formed RGB PNG header declaring width x height, with `rows` rows of genuine zero pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * ((3 * width + 1) * rows), 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="session")
def tiny_export_v2(tmp_path_factory) -> Path:
    """A second, different model: trained on the tiny dataset with two classes' folders swapped, so it disagrees
    with version 1 on those classes (what shadow agreement must notice)."""
    from exporter.evaluate import evaluate
    from exporter.export import export_from_run
    from exporter.train import TrainConfig, train

    data = write_dataset(tmp_path_factory.mktemp("data2") / "scenes", seed=1)
    (data / "circles").rename(data / "tmp")
    (data / "stripes").rename(data / "circles")
    (data / "tmp").rename(data / "stripes")
    run_dir = tmp_path_factory.mktemp("run2")
    train(TrainConfig(data=str(data), run_dir=str(run_dir), epochs=8, batch_size=16, input_size=32, widths=(8, 16),
                      blocks_per_stage=1, warmup_epochs=0, learning_rate=5e-3, val_fraction=0.15,
                      test_fraction=0.15, seed=7))
    evaluate(run_dir)
    return export_from_run(run_dir, None, tmp_path_factory.mktemp("models2"), "tiny", 2)


@pytest.fixture
def rollout_repo(models_repo, tiny_export_v2, tmp_path) -> Path:
    """A fresh repository per test: versions 1 and 2 exported, only 1 served (labelled stable)."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(models_repo, root)
    shutil.copytree(tiny_export_v2, root / "tiny" / "2")
    return root


@pytest.fixture(scope="session")
def eurosat_repo(tmp_path_factory) -> Path:
    """A model repository with the committed eurosat version 1 only (so tests never touch models/)."""
    import shutil

    from gateway.backends.base import ModelConfig
    from gateway.model_config import ConfigStore

    root = tmp_path_factory.mktemp("eurosat-repo")
    shutil.copytree(ROOT / "models" / "eurosat" / "1", root / "eurosat" / "1")
    ConfigStore(root, "/models").write([ModelConfig("eurosat", (1,), {"stable": 1})])
    return root


@pytest.fixture(scope="module")
def eurosat_gateway(eurosat_repo):
    """The committed EuroSAT model served by the gateway (local backend), HTTP and gRPC."""
    from gateway.app import create_app

    # a long deadline: admission refuses work estimated not to fit it, and a busy test machine slows scenes down
    settings = gateway_settings(eurosat_repo, model_name="eurosat", grpc_port=free_port(), max_body_bytes=50_000_000,
                                request_timeout_s=120)
    with LiveServer(create_app(settings)) as server:
        server.grpc_port = server.app.state.grpc_port
        yield server
