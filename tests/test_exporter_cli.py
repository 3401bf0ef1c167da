"""The exporter's command line: bad input gets one line and a non-zero exit, export is atomic and never overwrites,
any global-pooling Keras CNN exports, and a seeded run is reproducible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from exporter.dataset import load_dataset
from exporter.errors import ExporterError
from exporter.export import export_model
from tests.conftest import ROOT, write_dataset


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_and_empty_datasets(tmp_path):
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "nope")), "dataset not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "empty")), "is empty")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "bad.tar.gz")), "cannot read archive")


def test_class_folder_without_images(tmp_path):
    data = write_dataset(tmp_path / "d", per_class=4)
    shutil.rmtree(data / "noise")
    (data / "noise").mkdir()
    (data / "noise" / "readme.txt").write_text("no images here")
    assert_one_line_error(run_cli("train", "--data", str(data)), "'noise'", "no readable images")


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    data = write_dataset(tmp_path / "d", per_class=6)
    (data / "circles" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (data / "stripes" / "notes.png").write_text("text")
    loaded = load_dataset(data)
    assert len(loaded) == 18 and sorted(loaded.skipped) == ["circles/broken.jpg", "stripes/notes.png"]
    tarball = tmp_path / "d.tar.gz"
    subprocess.run(["tar", "czf", str(tarball), "-C", str(tmp_path), "d"], check=True)
    from_tar = load_dataset(tarball)
    assert from_tar.class_names == loaded.class_names and len(from_tar) == 18 and len(from_tar.skipped) == 2


def test_export_cli_errors_leave_nothing_behind(tmp_path, tiny_run):
    models = tmp_path / "models"
    assert_one_line_error(run_cli("export", "--model", str(tmp_path / "missing.keras"), "--models-dir", str(models)),
                          "model file not found")
    (tmp_path / "model.h5").write_bytes(b"xx")
    assert_one_line_error(run_cli("export", "--model", str(tmp_path / "model.h5"), "--models-dir", str(models)),
                          "not a .keras file")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    assert_one_line_error(run_cli("export", "--model", str(tmp_path / "bad.keras"), "--models-dir", str(models),
                                  "--class-names", str(tmp_path / "x")), "cannot load")
    ok = run_cli("export", "--run-dir", str(tiny_run), "--models-dir", str(models), "--name", "tiny")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith("tiny/1")
    again = run_cli("export", "--run-dir", str(tiny_run), "--models-dir", str(models), "--name", "tiny",
                    "--version", "1")
    assert_one_line_error(again, "already exists")
    nxt = run_cli("export", "--run-dir", str(tiny_run), "--models-dir", str(models), "--name", "tiny")
    assert nxt.stdout.strip().endswith("tiny/2")
    assert sorted(p.name for p in (models / "tiny").iterdir()) == ["1", "2"]  # no temporary folders left


def test_export_is_atomic_when_writing_fails(tmp_path, tiny_run, monkeypatch):
    import exporter.export as export_module

    model = keras.saving.load_model(tiny_run / "model.keras")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_warmup", explode)
    with pytest.raises(ExporterError, match="disk full"):
        export_model(model, ["a", "b", "c"], tmp_path, "tiny", 3)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_keras_applications_resnet50_exports_and_finds_its_layer(tmp_path):
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=4)
    path = export_model(model, ["a", "b", "c", "d"], tmp_path, "resnet50", None)
    import json

    meta = json.loads((path / "assets" / "metadata.json").read_text())
    assert meta["gradcam_layer"] == "conv5_block3_out" and meta["hires_layer"] == "conv4_block6_out"
    loaded = tf.saved_model.load(str(path))
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    out = loaded.signatures["gradcam_multilayer"](images=tf.constant(images), class_index=tf.constant([-1, 2]))
    assert out["activations"].shape == (2, 2, 2, 2048) and out["activations_hires"].shape == (2, 4, 4, 1024)
    probs = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(probs, model(images.astype(np.float32), training=False).numpy(), atol=1e-5)


def test_model_without_gradcam_layer_is_refused(tmp_path):
    inputs = keras.Input((16, 16, 3))
    flat = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(flat))
    with pytest.raises(ExporterError, match="global-average-pooling head"):
        export_model(model, ["a", "b", "c"], tmp_path, "mlp", None)
    assert not (tmp_path / "mlp").exists() or list((tmp_path / "mlp").iterdir()) == []


def test_seeded_training_is_reproducible(tiny_dataset, tmp_path):
    from exporter.train import TrainConfig, train

    weights = []
    for name in ("a", "b"):
        cfg = TrainConfig(data=str(tiny_dataset), run_dir=str(tmp_path / name), epochs=1, batch_size=16,
                          input_size=32, widths=(8, 16), blocks_per_stage=1, warmup_epochs=0, seed=99)
        run = train(cfg)
        weights.append(keras.saving.load_model(run / "model.keras").get_weights())
    for w1, w2 in zip(*weights, strict=True):
        np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)
