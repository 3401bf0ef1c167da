"""Training from scratch: seeded split, AdamW with warm-up and cosine decay, label smoothing, checkpoints."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from exporter.config import TrainConfig
from exporter.dataset import Dataset, load_dataset, stratified_split
from exporter.model import build_resnet
from exporter.pipeline import make_dataset


def _optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, cfg.warmup_epochs * steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate * 0.01 if warmup else cfg.learning_rate,
        decay_steps=total - warmup,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    opt.exclude_from_weight_decay(var_names=["_bn", "bias"])
    return opt


def split_dataset(data: Dataset, cfg: TrainConfig) -> dict[str, Dataset]:
    idx = stratified_split(data.labels, (cfg.val_fraction, cfg.test_fraction), cfg.seed)
    return {name: data.subset(i) for name, i in idx.items()}


def train(cfg: TrainConfig) -> Path:
    """Train and write `run_dir/{model.keras, history.json, run.json}`; returns the run directory."""
    run_dir = Path(cfg.run_dir)
    data = load_dataset(cfg.data)
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable file(s), e.g. {data.skipped[0]}", file=sys.stderr)
    splits = split_dataset(data, cfg)
    print(
        f"{len(data)} images, {len(data.class_names)} classes; "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
        file=sys.stderr,
    )
    keras.utils.set_random_seed(cfg.seed)
    train_ds = make_dataset(splits["train"], cfg.input_size, cfg.batch_size, training=True, seed=cfg.seed)
    val_ds = make_dataset(splits["val"], cfg.input_size, cfg.batch_size, training=False)
    steps = int(np.ceil(len(splits["train"]) / cfg.batch_size))
    model = build_resnet(len(data.class_names), cfg.input_size, cfg.widths, cfg.blocks_per_stage, cfg.dropout)
    if cfg.init_from:
        model.set_weights(keras.saving.load_model(cfg.init_from, compile=False).get_weights())
    model.compile(
        optimizer=_optimizer(cfg, steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=False,  # XLA measured slower on CPU for this network
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=1 if sys.stderr.isatty() else 2,
        callbacks=[keras.callbacks.ModelCheckpoint(run_dir / "model.keras")],
    )
    seconds = time.perf_counter() - started
    (run_dir / "history.json").write_text(json.dumps(history.history, indent=1))
    run = {
        "config": asdict(cfg),
        "class_names": data.class_names,
        "skipped_files": data.skipped,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "train_seconds": round(seconds, 1),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=1))
    print(f"trained in {seconds / 60:.1f} min; model at {run_dir / 'model.keras'}", file=sys.stderr)
    return run_dir
