"""The accelerated trainer (Keras on JAX, for GPU machines without TensorFlow), run here on the CPU: its packed
data is the training split and nothing else, its augmentations are the pipeline's kind, and what it trains is
finished, exported and evaluated like any run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from exporter.accelerated import pack, unpack
from exporter.config import TrainConfig
from exporter.dataset import decode_all, load_dataset
from exporter.errors import ExporterError
from exporter.train import split_dataset
from tests.conftest import ROOT, TINY_CLASSES
from tests.test_exporter_cli import assert_one_line_error


def accelerated(*args: str, backend: str = "jax") -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "exporter.accelerated", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def packed(tiny_dataset, tmp_path_factory):
    cfg = TrainConfig(data=str(tiny_dataset), run_dir="", input_size=32)
    path = tmp_path_factory.mktemp("packed") / "train.npz"
    pack(cfg, path)
    return cfg, path


def test_the_pack_is_the_training_split_decoded_as_training_decodes_it(packed):
    cfg, path = packed
    images, labels, class_names = unpack(path, cfg)
    train = split_dataset(load_dataset(cfg.data), cfg)["train"]
    assert class_names == sorted(TINY_CLASSES)
    assert np.array_equal(labels, train.labels)
    assert np.array_equal(images, decode_all(train, cfg.input_size))


def test_a_pack_of_another_split_is_refused(packed):
    cfg, path = packed
    with pytest.raises(ExporterError, match="packed with another split"):
        unpack(path, replace(cfg, seed=cfg.seed + 1))


def test_augmentations_turn_flip_shift_and_jitter_but_stay_images():
    import jax

    from exporter.accelerated import augment

    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 2:6, 2:6] = 255  # a bright square near one corner: where it lands tells the turn and flip
    batch = np.repeat(image, 64, axis=0)
    out = np.asarray(augment(batch, jax.random.key(0), 32))
    assert out.shape == batch.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out, np.asarray(augment(batch, jax.random.key(0), 32)))  # a key fixes every draw
    brightest = out.mean(axis=-1).reshape(64, -1).argmax(axis=1)
    corners = {(r >= 16, c >= 16) for r, c in zip(*np.unravel_index(brightest, (32, 32)), strict=True)}
    assert len(corners) == 4  # the square visited every corner: turns and flips
    shifts = {tuple(np.argwhere(o.mean(-1) > 128).min(0)) for o in out}
    assert len(shifts) > 8  # and not always at the same offset: the crop moves it


def test_a_run_trained_on_jax_is_finished_exported_and_evaluated_like_any_run(packed, tmp_path):
    from exporter.accelerated import finish
    from exporter.evaluate import evaluate
    from exporter.export import export_from_run

    cfg, path = packed
    run_dir = tmp_path / "run"
    out = accelerated("train", "--packed", str(path), "--run-dir", str(run_dir), "--budget-s", "300",
                      "--max-epochs", "40", "--widths", "8,16", "--blocks-per-stage", "1", "--input-size", "32")
    assert out.returncode == 0, out.stderr
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epochs_done"] == history["epochs"] == 40 and len(history["loss"]) == 40
    assert history["config"]["seed"] == TrainConfig.seed  # the project's split, whatever the initialisation seed

    finish(run_dir, cfg.data)
    run = json.loads((run_dir / "run.json").read_text())
    assert 0.1 <= run["temperature"] <= 10 and run["split_sizes"]["train"] == len(unpack(path, cfg)[1])
    evaluate(run_dir)
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5  # three separable synthetic classes
    version = export_from_run(run_dir, None, tmp_path / "models", "tiny", None)
    meta = json.loads((version / "assets" / "metadata.json").read_text())
    assert meta["training"]["config"]["widths"] == [8, 16]


def test_training_without_the_jax_backend_is_one_line_to_fix(packed, tmp_path):
    _, path = packed
    out = accelerated("train", "--packed", str(path), "--run-dir", str(tmp_path / "r"), "--budget-s", "5",
                      backend="tensorflow")
    assert_one_line_error(out, "KERAS_BACKEND=jax")


def test_a_run_cut_after_an_epoch_and_resumed_ends_where_the_uncut_run_does(packed, tmp_path):
    """Every epoch ends with a checkpoint (weights, optimizer, batch-norm statistics, dropout's seed, the data order
    and augmentation RNGs); `--resume` continues it to the same weights as an uncut run."""
    import keras

    _, path = packed
    common = ("--packed", str(path), "--budget-s", "300", "--epochs", "5", "--widths", "8,16", "--blocks-per-stage",
              "1", "--input-size", "32", "--init-seed", "3")
    uncut, cut = tmp_path / "uncut", tmp_path / "cut"
    assert accelerated("train", "--run-dir", str(uncut), *common).returncode == 0
    out = accelerated("train", "--run-dir", str(cut), *common, "--stop-after-epoch", "2")
    assert out.returncode == 0, out.stderr
    assert json.loads((cut / "history.json").read_text())["progress"].startswith("epoch 2/5 (stopped as asked")
    again = accelerated("train", "--run-dir", str(cut), *common)  # a fresh start would throw two epochs away
    assert_one_line_error(again, "unfinished run (epoch 2/5)", "--resume")
    out = accelerated("train", "--run-dir", str(cut), "--packed", str(path), "--budget-s", "300", "--resume")
    assert out.returncode == 0, out.stderr
    a, b = (json.loads((d / "history.json").read_text()) for d in (uncut, cut))
    assert a["progress"] == b["progress"] == "epoch 5/5" and a["loss"] == b["loss"]
    weights = [keras.saving.load_model(d / "model.keras", compile=False).get_weights() for d in (uncut, cut)]
    for x, y in zip(*weights, strict=True):
        np.testing.assert_array_equal(x, y)
    assert sorted(p.name for p in cut.glob("checkpoint*")) == ["checkpoint-0005.npz", "checkpoint.json"]


def test_a_student_distils_its_teachers_labels_of_mixed_views_and_mixup_needs_a_teacher(packed, tmp_path):
    """Function matching with mixup: the teacher labels each blend of two views, so the student's agreement with
    it is what the run records; a blend with no teacher to label it is refused in one line."""
    _, path = packed
    common = ("--packed", str(path), "--budget-s", "300", "--widths", "8,16", "--blocks-per-stage", "1",
              "--input-size", "32")
    teacher = tmp_path / "teacher"
    assert accelerated("train", "--run-dir", str(teacher), *common, "--epochs", "3").returncode == 0
    student = tmp_path / "student"
    out = accelerated("train", "--run-dir", str(student), *common, "--epochs", "3", "--mixup", "0.4",
                      "--teacher", str(teacher / "model.keras"), "--init-from", str(teacher / "model.keras"))
    assert out.returncode == 0, out.stderr
    history = json.loads((student / "history.json").read_text())
    assert history["config"]["mixup"] == 0.4 and history["config"]["teachers"] == [str(teacher / "model.keras")]
    assert len(history["accuracy"]) == 3 and all(0 <= a <= 1 for a in history["accuracy"])
    alone = accelerated("train", "--run-dir", str(tmp_path / "alone"), *common, "--epochs", "3", "--mixup", "0.4")
    assert_one_line_error(alone, "--mixup", "--teacher")
