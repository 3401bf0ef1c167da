"""Distillation: `train --teacher` learns each training image's eight-view class distribution from trained models
instead of its one-hot label; the targets are what the teachers say, are kept for a resumed run, and a teacher
that does not fit the run is refused in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from exporter.config import TrainConfig
from exporter.dataset import decode_all, load_dataset
from exporter.distill import TARGETS_FILE
from exporter.errors import ExporterError
from exporter.model import build_resnet
from exporter.train import split_dataset, train
from tests.test_exporter_cli import assert_one_line_error, run_cli


def student_config(data: Path, run_dir: Path, teacher: Path, epochs: int = 2) -> TrainConfig:
    return TrainConfig(data=str(data), run_dir=str(run_dir), epochs=epochs, batch_size=16, input_size=32,
                       widths=(8, 16), blocks_per_stage=1, warmup_epochs=0, learning_rate=5e-3,
                       val_fraction=0.15, test_fraction=0.15, teachers=(str(teacher),))


def eight_views(image: np.ndarray) -> list[np.ndarray]:
    """Written with NumPy, independently of the exporter's TensorFlow version."""
    return [np.rot90(x, k) for x in (image, image[:, ::-1]) for k in range(4)]


@pytest.fixture(scope="module")
def student(tiny_dataset, tiny_run, tmp_path_factory) -> Path:
    return train(student_config(tiny_dataset, tmp_path_factory.mktemp("student"), tiny_run / "model.keras"))


def train_images(cfg: TrainConfig) -> np.ndarray:
    return decode_all(split_dataset(load_dataset(cfg.data), cfg)["train"], cfg.input_size)


def eight_view_distribution(teacher: Path, images: np.ndarray) -> np.ndarray:
    model = keras.saving.load_model(teacher, compile=False)
    views = np.stack([v for image in images for v in eight_views(image)]).astype(np.float32)
    logits = model.predict(views, verbose=0).reshape(len(images), 8, -1).mean(axis=1)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_targets_are_the_teachers_eight_view_distribution(student, tiny_run, tiny_dataset):
    cfg = student_config(tiny_dataset, student, tiny_run / "model.keras")
    images = train_images(cfg)
    picked = [0, len(images) // 2, len(images) - 1]
    targets = np.load(student / TARGETS_FILE)
    assert targets.shape == (len(images), 3)
    np.testing.assert_allclose(targets[picked], eight_view_distribution(tiny_run / "model.keras", images[picked]),
                               atol=1e-5)
    run = json.loads((student / "run.json").read_text())
    assert run["config"]["teachers"] == [str(tiny_run / "model.keras")]
    assert (student / "model.keras").is_file()


def test_a_fresh_run_in_a_finished_runs_folder_asks_its_own_teachers(student, tiny_dataset, tmp_path):
    """Only --resume reads targets back: a new run over an old distillation learns from its own teachers."""
    run_dir = tmp_path / "again"
    shutil.copytree(student, run_dir)
    other = tmp_path / "other-teacher.keras"
    keras.utils.set_random_seed(5)
    build_resnet(3, 32, (8, 16), 1).save(other)
    train(student_config(tiny_dataset, run_dir, other, epochs=1))
    images = train_images(student_config(tiny_dataset, run_dir, other))
    targets = np.load(run_dir / TARGETS_FILE)
    assert not np.allclose(targets, np.load(student / TARGETS_FILE), atol=1e-3)
    np.testing.assert_allclose(targets[:4], eight_view_distribution(other, images[:4]), atol=1e-5)


def test_a_resumed_run_learns_from_the_targets_it_started_with(student, tiny_run, tiny_dataset, tmp_path):
    """The teachers run once per run: a cut run resumes from its cached targets even when a teacher is gone."""
    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes((tiny_run / "model.keras").read_bytes())
    run_dir = tmp_path / "cut"
    cfg = student_config(tiny_dataset, run_dir, teacher, epochs=2)
    train(cfg)
    before = np.load(run_dir / TARGETS_FILE)
    state = json.loads((run_dir / "checkpoint.json").read_text())
    state["epochs_done"], state["epochs"] = 1, 3  # as if cut after epoch 1 of 3 ...
    state["config"]["epochs"] = 3
    (run_dir / "checkpoint.json").write_text(json.dumps(state))
    (run_dir / "model.keras").unlink()
    teacher.unlink()  # ... and the teacher has been deleted since
    resumed = train(student_config(tiny_dataset, run_dir, teacher, epochs=3), resume=True)
    np.testing.assert_array_equal(np.load(resumed / TARGETS_FILE), before)
    assert json.loads((resumed / "history.json").read_text())["progress"] == "epoch 3/3 (resumed)"


def test_a_teacher_that_does_not_fit_is_refused_in_one_line(tiny_run, tiny_dataset, tmp_path):
    common = ("train", "--data", str(tiny_dataset), "--epochs", "1", "--widths", "8,16", "--blocks-per-stage", "1",
              "--warmup-epochs", "0")
    out = run_cli(*common, "--run-dir", str(tmp_path / "a"), "--teacher", str(tmp_path / "missing.keras"))
    assert_one_line_error(out, "model file not found", "missing.keras")
    out = run_cli(*common, "--run-dir", str(tmp_path / "b"), "--input-size", "48",
                  "--teacher", str(tiny_run / "model.keras"))
    assert_one_line_error(out, "teacher", "(32, 32, 3)", "(48, 48, 3)")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_fresh_run_reuses_a_finished_runs_targets_instead_of_asking_the_teachers(student, tiny_run, tiny_dataset,
                                                                                   tmp_path):
    """--targets-from: the teachers' eight views of every image are the costly part; a second student of the same
    teachers and split reads them from the first run (altered here, so reading cannot pass for recomputing)."""
    source = tmp_path / "first"
    shutil.copytree(student, source)
    altered = np.roll(np.load(student / TARGETS_FILE), 1, axis=1)
    np.save(source / TARGETS_FILE, altered)
    run_dir = tmp_path / "second"
    train(student_config(tiny_dataset, run_dir, tiny_run / "model.keras", epochs=1), targets_from=str(source))
    np.testing.assert_array_equal(np.load(run_dir / TARGETS_FILE), altered)
    assert (run_dir / "model.keras").is_file()


def test_targets_of_other_teachers_or_images_are_refused(student, tiny_run, tiny_dataset, tmp_path):
    """Targets are one row per training image of one split, from one teacher list: anything else is refused,
    naming what differs, before the run's folder is made."""
    cfg = student_config(tiny_dataset, tmp_path / "a", tiny_run / "model.keras", epochs=1)
    with pytest.raises(ExporterError, match=r"run's seed differ"):
        train(replace(cfg, seed=7), targets_from=str(student))
    with pytest.raises(ExporterError, match=r"run's teachers differ"):
        train(replace(cfg, teachers=(str(tmp_path / "other.keras"),)), targets_from=str(student))
    assert not (tmp_path / "a").exists()
    out = run_cli("train", "--data", str(tiny_dataset), "--run-dir", str(tmp_path / "b"), "--targets-from",
                  str(student))
    assert_one_line_error(out, "--targets-from", "teachers")
    out = run_cli("train", "--data", str(tiny_dataset), "--run-dir", str(student), "--targets-from", str(student),
                  "--resume")
    assert_one_line_error(out, "--targets-from", "--resume")
    assert not (tmp_path / "b").exists()
