"""Distillation targets: a student learns the class distribution that teachers (for example a wider model and an
ensemble of earlier runs) assign to each training image averaged over its eight dihedral views, instead of a
one-hot label. Those views are exactly the flips and turns training augments with, so one target per image holds
for every augmented draw, and the teachers run once per image, not once per step."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from exporter.config import SAME_SPLIT, TrainConfig, differing, require_state
from exporter.errors import ExporterError
from exporter.export import VIEWS, dihedral_views, load_keras_model

TARGETS_FILE = "teacher_targets.npy"  # cached in the run directory, so a resumed run learns from the same targets


def view_mean_logits(model: keras.Model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """[N, C] mean logits of the eight dihedral views of each uint8 image, inference mode."""
    from tqdm import tqdm

    @tf.function(reduce_retracing=True)  # one graph for every batch, not op-by-op eager calls
    def mean_over_views(batch: tf.Tensor) -> tf.Tensor:
        logits = model(dihedral_views(tf.cast(batch, tf.float32)), training=False)
        return tf.reduce_mean(tf.reshape(logits, [VIEWS, tf.shape(batch)[0], -1]), axis=0)

    starts = range(0, len(images), batch_size)
    out = [mean_over_views(tf.constant(images[i:i + batch_size])).numpy()
           for i in tqdm(starts, desc="teacher, 8 views", unit="batch", disable=len(images) < 1024)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def load_teachers(paths: tuple[str, ...], input_size: int) -> list[keras.Model]:
    """Each teacher, refused unless it is a .keras model taking this run's square RGB input."""
    models = [load_keras_model(p) for p in paths]
    for path, model in zip(paths, models, strict=True):
        shape = tuple(model.inputs[0].shape[1:])
        if shape != (input_size, input_size, 3):
            raise ExporterError(f"teacher {path} takes images of shape {shape}; this run trains on "
                                f"({input_size}, {input_size}, 3): pass a teacher of the same --input-size")
    return models


def reuses_targets(run_dir: Path, resume: bool, borrowed: bool = False) -> bool:
    """The one decision: a resumed run reads its own targets back (its teachers are the run's own, checked by
    --resume), a fresh one those it was told to borrow (`borrow_targets` checked them); any other fresh run computes
    them again, so a finished run's folder never lends it another run's targets by accident."""
    return borrowed or (resume and (run_dir / TARGETS_FILE).is_file())


SAME_TARGETS = (*SAME_SPLIT, "teachers")  # the same training images, labelled by the same teachers


def borrow_targets(source: str | Path, cfg: TrainConfig) -> None:
    """Copy the targets another run computed into this fresh run's folder (they cost the teachers' eight views of
    every training image: 40 min for four teachers on two cores), refused unless that run had the same training
    images and teachers; from then on they are this run's own, so `--resume` reads them back."""
    source = Path(source)
    theirs = TrainConfig.from_json(require_state(source)["config"])
    differ = differing(theirs, cfg, SAME_TARGETS)
    if differ:
        raise ExporterError(f"--targets-from {source}: that run's {', '.join(differ)} differ from this run's, so its "
                            "targets belong to other images or teachers")
    if not (source / TARGETS_FILE).is_file():
        raise ExporterError(f"--targets-from {source}: it holds no {TARGETS_FILE} (it was not a distillation run)")
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(cfg.run_dir) / f".tmp-{TARGETS_FILE}"
    shutil.copyfile(source / TARGETS_FILE, tmp)
    os.replace(tmp, Path(cfg.run_dir) / TARGETS_FILE)


def read_targets(run_dir: Path, num_images: int, num_classes: int) -> np.ndarray:
    """The [N, C] targets an earlier (cut) attempt of this run wrote."""
    path = run_dir / TARGETS_FILE
    targets = np.load(path)
    if targets.shape != (num_images, num_classes):
        raise ExporterError(f"{path} holds targets for {targets.shape} images x classes, not "
                            f"{(num_images, num_classes)}: delete it to compute them again")
    return targets


def write_targets(run_dir: Path, teachers: list[keras.Model], images: np.ndarray, num_classes: int) -> np.ndarray:
    """Softmax of the teachers' view-mean logits averaged over teachers (as an ensemble serves them), written
    atomically to the run directory for a resumed run."""
    for model in teachers:
        if model.outputs[0].shape[-1] != num_classes:
            raise ExporterError(f"teacher '{model.name}' gives {model.outputs[0].shape[-1]} classes; the dataset "
                                f"has {num_classes}")
    logits = np.mean([view_mean_logits(model, images) for model in teachers], axis=0)
    targets = tf.nn.softmax(logits).numpy().astype(np.float32)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / TARGETS_FILE
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, targets)
    os.replace(tmp, path)
    return targets
