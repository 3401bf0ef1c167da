"""Greedy weight soup (Wortsman et al., 2022): the weights of finished runs of one network, averaged, keeping each run
only if the average does not lose validation accuracy. One network's cost per tile, unlike an ensemble's; it helps
when the runs lie in one basin (fine-tuned from each other), and the validation split, not test, decides."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from exporter.config import SAME_SPLIT, TrainConfig, differing, save_model_atomically
from exporter.dataset import decode_all, load_dataset
from exporter.errors import ExporterError
from exporter.export import load_keras_model
from exporter.train import split_dataset, write_run


def read_ingredient(run_dir: Path) -> dict:
    """A finished run's record (run.json), refused in one line when the run has not finished."""
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise ExporterError(f"--ingredient {run_dir}: no readable run.json ({exc.__class__.__name__}); pass a "
                            "finished training run") from None


def average(weights: list[list[np.ndarray]], indices: list[int]) -> list[np.ndarray]:
    """Each variable's mean over the chosen runs (batch-norm statistics included, as the paper's soups do)."""
    return [np.mean([weights[j][k] for j in indices], axis=0) for k in range(len(weights[0]))]


def greedy(weights: list[list[np.ndarray]], accuracy) -> tuple[list[int], list[dict]]:
    """Indices of the kept ingredients, tried in the given order, and every trial's validation accuracy."""
    kept, best, trials = [0], accuracy(weights[0]), []
    trials.append({"ingredients": [0], "val_accuracy": best, "kept": True})
    for i in range(1, len(weights)):
        trial = [*kept, i]
        score = accuracy(average(weights, trial))
        trials.append({"ingredients": trial, "val_accuracy": score, "kept": score >= best})
        if score >= best:
            kept, best = trial, score
    return kept, trials


def soup(ingredients: list[str], run_dir: str) -> Path:
    """Write `run_dir/{model.keras, run.json}` (as training does, so `evaluate` and `export` take it): the greedy soup
    of the ingredient runs, tried from the best validation accuracy down."""
    if len(set(ingredients)) < 2 or len(set(ingredients)) != len(ingredients):
        raise ExporterError("--ingredient: give at least two different finished runs to average")
    if (Path(run_dir) / "run.json").exists() or (Path(run_dir) / "checkpoint.json").exists():
        raise ExporterError(f"{run_dir} already holds a run: pick another --run-dir for the soup")
    runs = {path: read_ingredient(Path(path)) for path in ingredients}
    order = sorted(ingredients, key=lambda path: -runs[path]["val_accuracy"])  # stable: ties keep the given order
    configs = [TrainConfig.from_json(runs[path]["config"]) for path in order]
    for path, cfg in zip(order[1:], configs[1:], strict=True):
        differ = differing(cfg, configs[0], SAME_SPLIT)
        if differ:
            raise ExporterError(f"--ingredient {path}: its {', '.join(differ)} differ from {order[0]}'s, so "
                                "validation would judge them on other images")
    models = [load_keras_model(Path(path) / "model.keras") for path in order]
    shapes = [[w.shape for w in m.get_weights()] for m in models]
    for path, shape in zip(order[1:], shapes[1:], strict=True):
        if shape != shapes[0]:
            raise ExporterError(f"--ingredient {path}: its network differs from {order[0]}'s; a soup averages "
                                "runs of one architecture")
    cfg = replace(configs[0], run_dir=run_dir)
    data = load_dataset(cfg.data)
    splits = split_dataset(data, cfg)
    val_images = decode_all(splits["val"], cfg.input_size)
    model = models[0]

    def accuracy(weights: list[np.ndarray]) -> float:
        model.set_weights(weights)
        logits = model.predict(val_images.astype(np.float32), batch_size=256, verbose=0)
        return round(float((logits.argmax(1) == splits["val"].labels).mean()), 4)

    all_weights = [m.get_weights() for m in models]
    kept, trials = greedy(all_weights, accuracy)
    model.set_weights(average(all_weights, kept))
    for trial in trials:
        trial["ingredients"] = [order[j] for j in trial["ingredients"]]
        print(f"{' + '.join(trial['ingredients'])}: val {trial['val_accuracy']:.2%} "
              f"({'kept' if trial['kept'] else 'dropped'})", file=sys.stderr)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model_atomically(model, out / "model.keras")
    write_run(out, model, cfg, data, splits, val_images, soup=[order[j] for j in kept], soup_trials=trials,
              tensorflow_version=tf.__version__, keras_version=keras.__version__)
    return out
