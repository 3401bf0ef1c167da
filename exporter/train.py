"""Training from scratch: seeded split, AdamW with warm-up and cosine decay, label smoothing, and a checkpoint after
every epoch that `train --resume` continues from to the same result as an uncut run."""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from exporter.calibration import fit_temperature
from exporter.config import (
    STATE_FILE,
    TrainConfig,
    read_state,
    require_state,
    save_model_atomically,
    write_atomically,
)
from exporter.dataset import Dataset, decode_all, load_dataset, stratified_split
from exporter.distill import borrow_targets, load_teachers, read_targets, reuses_targets, write_targets
from exporter.errors import ExporterError
from exporter.model import build_from_config, build_optimizer
from exporter.pipeline import eval_batches, training_batches

CHECKPOINTS = "checkpoints"


def split_dataset(data: Dataset, cfg: TrainConfig) -> dict[str, Dataset]:
    idx = stratified_split(data.labels, (cfg.val_fraction, cfg.test_fraction), cfg.seed)
    return {name: data.subset(i) for name, i in idx.items()}


def _seed_generators(model: keras.Model) -> list:
    """Dropout's random state: a variable per layer that `.keras` files do not save."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _rng_state(model: keras.Model) -> dict:
    """Every random state training draws from besides the data (whose draws are keyed by seed and epoch): the
    model's seed generators, and the Python, NumPy and TensorFlow global generators (unused today, but a change
    that draws from them must not silently break resume)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "model_seed_generators": [v.numpy().tolist() for v in _seed_generators(model)],
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "tensorflow": tf.random.get_global_generator().state.numpy().tolist(),
    }


def _restore_rng_state(model: keras.Model, state: dict) -> None:
    for variable, value in zip(_seed_generators(model), state["model_seed_generators"], strict=True):
        variable.assign(np.asarray(value, variable.dtype))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    generator = tf.random.get_global_generator()
    generator.reset(tf.constant(state["tensorflow"], generator.state.dtype))


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: model + optimizer (whose iteration counter is the schedule position) to a new .keras file,
    then the record pointing at it (history, RNG state, time so far) replaces the old one: the commit point.
    A cut at any instant leaves the previous complete checkpoint."""

    def __init__(self, cfg: TrainConfig, class_names: list[str], state: dict | None):
        super().__init__()
        self.cfg, self.class_names = cfg, class_names
        self.run_dir = Path(cfg.run_dir)
        self.history: dict[str, list[float]] = state["history"] if state else {}
        self.resumed_at: list[int] = state["resumed_at_epochs"] + [state["epochs_done"]] if state else []
        self.seconds = state["train_seconds"] if state else 0.0
        self.epoch_started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.seconds += time.perf_counter() - self.epoch_started
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        done = epoch + 1
        folder = self.run_dir / CHECKPOINTS
        folder.mkdir(exist_ok=True)
        name = f"epoch-{done:04d}.keras"
        save_model_atomically(self.model, folder / name)
        progress = {
            "progress": f"epoch {done}/{self.cfg.epochs}" + (" (resumed)" if self.resumed_at else ""),
            "epochs_done": done,
            "epochs": self.cfg.epochs,
            "resumed_at_epochs": self.resumed_at,
            "train_seconds": round(self.seconds, 1),
        }
        state = {
            **progress,
            "checkpoint": f"{CHECKPOINTS}/{name}",
            "config": asdict(self.cfg),
            "class_names": self.class_names,
            "history": self.history,
            "rng": _rng_state(self.model),
        }
        write_atomically(self.run_dir / STATE_FILE, json.dumps(state))
        write_atomically(self.run_dir / "history.json", json.dumps({**progress, **self.history}, indent=1))
        for old in folder.glob("*.keras"):  # older epochs, and a temporary file a kill left behind
            if old.name != name:
                old.unlink()


def _check_resumable(cfg: TrainConfig, state: dict | None, resume: bool) -> None:
    """Never train over an unfinished run by accident; resume only with the settings the run started with."""
    run_dir = cfg.run_dir
    if not resume and state and state["epochs_done"] < state["epochs"]:
        raise ExporterError(
            f"{run_dir} holds an unfinished run (epoch {state['epochs_done']}/{state['epochs']}): "
            "pass --resume to continue it, or pick another --run-dir"
        )
    if resume:
        ignore = ("run_dir", "data")
        saved = {k: v for k, v in TrainConfig.from_json(state["config"]).__dict__.items() if k not in ignore}
        given = {k: v for k, v in asdict(cfg).items() if k not in ignore}
        if saved != given:
            diff = ", ".join(f"{k} (run: {saved[k]}, given: {given[k]})" for k in saved if saved[k] != given[k])
            raise ExporterError(f"--resume continues {run_dir} with its own settings; these differ: {diff}")


def train(cfg: TrainConfig, resume: bool = False, callbacks: tuple = (), targets_from: str | None = None) -> Path:
    """Train (or with `resume`, continue from the last epoch checkpoint) and write `run_dir/{model.keras,
    history.json, run.json}`; returns the run directory. `callbacks` run after the epoch checkpoint is written;
    `targets_from` is a finished distillation run whose teacher targets a fresh run reuses."""
    run_dir = Path(cfg.run_dir)
    state = require_state(run_dir) if resume else read_state(run_dir)
    _check_resumable(cfg, state, resume)
    borrowed = bool(targets_from) and not resume
    if borrowed:
        borrow_targets(targets_from, cfg)
    reuse = reuses_targets(run_dir, resume, borrowed)  # then the teachers need not run
    teachers = load_teachers(cfg.teachers, cfg.input_size) if cfg.teachers and not reuse else []
    data = load_dataset(cfg.data)
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable file(s), e.g. {data.skipped[0]}", file=sys.stderr)
    if resume and data.class_names != state["class_names"]:
        raise ExporterError(f"dataset classes {data.class_names} differ from the run's {state['class_names']}")
    splits = split_dataset(data, cfg)
    print(
        f"{len(data)} images, {len(data.class_names)} classes; "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
        file=sys.stderr,
    )
    if cfg.schedule_warmup_epochs != cfg.warmup_epochs:
        print(f"warning: {cfg.warmup_epochs} warm-up epochs in a {cfg.epochs}-epoch run would leave the learning rate "
              f"below its peak for most of it; warming up for {cfg.schedule_warmup_epochs} instead", file=sys.stderr)
    first = state["epochs_done"] if resume else 0
    if first >= cfg.epochs and (run_dir / "model.keras").is_file():
        print(f"{run_dir} already finished its {cfg.epochs} epochs", file=sys.stderr)
        return run_dir
    train_images = decode_all(splits["train"], cfg.input_size)
    depth = len(data.class_names)
    if cfg.teachers:  # before seeding: running the teachers must not shift the student's random draws
        targets = (read_targets(run_dir, len(train_images), depth) if reuse
                   else write_targets(run_dir, teachers, train_images, depth))
        agree = float((targets.argmax(1) == splits["train"].labels).mean())
        print(f"distilling from {len(cfg.teachers)} teacher(s); they agree with {agree:.2%} of the training labels",
              file=sys.stderr)
    else:
        targets = np.eye(depth, dtype=np.float32)[splits["train"].labels]
    keras.utils.set_random_seed(cfg.seed)
    n_train = len(splits["train"])
    steps = -(-n_train // cfg.batch_size)
    model = build_from_config(cfg, depth)
    if cfg.init_from and not resume:
        model.set_weights(keras.saving.load_model(cfg.init_from, compile=False).get_weights())
    model.compile(
        optimizer=build_optimizer(cfg, steps),
        # a teacher's distribution is already soft: smoothing it further would only blur what it knows
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=0.0 if cfg.teachers else cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=False,  # XLA measured slower on CPU for this network
    )
    if resume:  # same model and optimizer as a fresh run (a loaded one would lose its weight-decay exclusions) ...
        model.optimizer.build(model.trainable_variables)
        model.load_weights(run_dir / state["checkpoint"])  # ... then its weights and optimizer state
        _restore_rng_state(model, state["rng"])
        print(f"resuming {run_dir} after epoch {first}/{cfg.epochs} ({state['checkpoint']})", file=sys.stderr)
    train_ds = training_batches(train_images, targets, cfg.batch_size, cfg.seed, first, cfg.epochs)
    val_images = decode_all(splits["val"], cfg.input_size)
    val_ds = eval_batches(val_images, splits["val"].labels, depth, cfg.batch_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = EpochCheckpoint(cfg, data.class_names, state if resume else None)
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        initial_epoch=first,
        steps_per_epoch=steps,  # one iterator over all remaining epochs (see training_batches)
        shuffle=False,  # training_batches shuffles, keyed by seed and epoch
        verbose=1 if sys.stderr.isatty() else 2,
        callbacks=[checkpoint, *callbacks],
    )
    save_model_atomically(model, run_dir / "model.keras")
    write_run(run_dir, model, cfg, data, splits, val_images, train_seconds=round(checkpoint.seconds, 1),
              resumed_at_epochs=checkpoint.resumed_at, tensorflow_version=tf.__version__,
              keras_version=keras.__version__)
    print(f"trained in {checkpoint.seconds / 60:.1f} min; model at {run_dir / 'model.keras'}", file=sys.stderr)
    return run_dir


def write_run(run_dir: Path, model: keras.Model, cfg: TrainConfig, data: Dataset, splits: dict[str, Dataset],
              val_images: np.ndarray, **extra) -> dict:
    """`run.json`, the record `evaluate` and `export` read: the settings, the split, and the temperature fitted on
    the validation split (baked into the export). Both trainers end with it."""
    val_logits = model.predict(val_images.astype(np.float32), batch_size=256, verbose=0)
    run = {
        "temperature": round(fit_temperature(val_logits, splits["val"].labels), 4),
        "config": asdict(cfg),
        "class_names": data.class_names,
        "skipped_files": data.skipped,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "val_accuracy": round(float((val_logits.argmax(1) == splits["val"].labels).mean()), 4),
        **extra,
    }
    write_atomically(run_dir / "run.json", json.dumps(run, indent=1))
    return run
