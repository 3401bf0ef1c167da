"""Evaluation on the held-out test split, of a training run or of an exported version as served: accuracy,
per-class P/R/F1, confusion matrix, calibration (ECE, NLL, reliability diagram), curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from exporter.errors import ExporterError


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro averages and the confusion matrix (rows: truth)."""
    n = len(class_names)
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(cm[i].sum()),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": round(float(tp.sum() / max(1, cm.sum())), 4),
        "macro_precision": round(float(precision.mean()), 4),
        "macro_recall": round(float(recall.mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "num_test_images": int(cm.sum()),
        "per_class": per_class,
        "confusion_matrix": {"labels": class_names, "matrix": cm.tolist()},
    }


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] < 0.5 else "black")
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(history: dict, path: Path, distilled: bool = False) -> None:
    """Loss and accuracy per epoch. A distilled run's train side is measured against its teachers' soft targets (the
    loss includes their entropy; the accuracy is agreement with their top class), so the legend says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history.get("loss", [])) + 1)
    train_labels = {"loss": "train loss vs teachers", "accuracy": "train agreement with teachers"} if distilled \
        else {"loss": "train loss", "accuracy": "train accuracy"}
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        ax.plot(epochs, history.get(key, []), label=train_labels[key])
        if f"val_{key}" in history:  # the accelerated trainer holds no validation split
            ax.plot(epochs, history[f"val_{key}"], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, not 2.5
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_evaluation(out: Path, labels: np.ndarray, logits: np.ndarray, probabilities: np.ndarray,
                     class_names: list[str], **extra) -> dict:
    """Metrics of what is served (argmax and confidence of `probabilities`), calibration before (softmax of the raw
    logits) and after, confusion matrix and reliability diagram, written to `out`."""
    from exporter.calibration import calibration_summary, plot_reliability, softmax

    raw = softmax(logits)
    metrics = classification_metrics(labels, probabilities.argmax(axis=1), class_names)
    metrics["calibration"] = {"before": calibration_summary(raw, labels), "after": calibration_summary(probabilities,
                                                                                                      labels)}
    metrics.update(extra)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "confusion_matrix.json").write_text(json.dumps(metrics["confusion_matrix"], indent=1))
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]["matrix"]), class_names, out / "confusion_matrix.png")
    plot_reliability({"raw logits": raw, "as served": probabilities}, labels, out / "reliability_diagram.png")
    after = metrics["calibration"]["after"]
    print(f"accuracy {metrics['accuracy']:.4f} on {metrics['num_test_images']} images; ECE {after['ece_15_bins']:.4f}"
          f" (raw {metrics['calibration']['before']['ece_15_bins']:.4f}), NLL {after['nll']:.4f}")
    return metrics


def evaluate(run_dir: str | Path, data: str | None = None) -> dict:
    """Write `run_dir/evaluation/{metrics.json, confusion_matrix.json, confusion_matrix.png, reliability_diagram.png,
    training_curves.png}`, with the probabilities calibrated by the run's temperature as the export will serve them."""
    run_dir = Path(run_dir)
    run_file, model_file = run_dir / "run.json", run_dir / "model.keras"
    if not run_file.is_file() or not model_file.is_file():
        raise ExporterError(f"{run_dir} holds no finished training run (run.json, model.keras): run `train` first")
    import keras

    from exporter.calibration import softmax
    from exporter.dataset import decode_all, load_dataset
    from exporter.train import TrainConfig, split_dataset

    run = json.loads(run_file.read_text())
    cfg = TrainConfig.from_json(run["config"])
    dataset = load_dataset(data or cfg.data)
    if dataset.class_names != run["class_names"]:
        raise ExporterError(f"dataset classes {dataset.class_names} differ from the run's {run['class_names']}")
    test = split_dataset(dataset, cfg)["test"]
    model = keras.saving.load_model(model_file)
    logits = model.predict(decode_all(test, cfg.input_size).astype(np.float32), batch_size=256, verbose=0)
    temperature = run.get("temperature", 1.0)
    out = run_dir / "evaluation"
    metrics = write_evaluation(out, test.labels, logits, softmax(logits, temperature), dataset.class_names,
                               temperature=temperature, train_seconds=run.get("train_seconds"))
    print(f"wrote {out}")
    history_file = run_dir / "history.json"
    if history_file.is_file():
        plot_history(json.loads(history_file.read_text()), out / "training_curves.png", distilled=bool(cfg.teachers))
    return metrics


def version_dir(models_dir: str | Path, name: str, version: int) -> Path:
    path = Path(models_dir) / name / str(version)
    if not (path / "saved_model.pb").is_file() or not (path / "assets" / "metadata.json").is_file():
        raise ExporterError(f"{path} is not an exported version (saved_model.pb, assets/metadata.json): "
                            "check --models-dir, --name and --version")
    return path


def served_outputs(saved_model, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) from the `serving_default` signature, exactly what a client gets."""
    import tensorflow as tf

    serve = saved_model.signatures["serving_default"]
    outs = [serve(images=tf.constant(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return tuple(np.concatenate([o[key].numpy() for o in outs]) for key in ("logits", "probabilities"))


def version_data(path: Path, data: str | None = None) -> tuple[dict, dict]:
    """A version's metadata and its training data as split for training (same seed: train / val / test), or all of
    `data` (as "all") when given."""
    from exporter.config import TrainConfig
    from exporter.dataset import load_dataset
    from exporter.train import split_dataset

    meta = json.loads((path / "assets" / "metadata.json").read_text())
    config = meta.get("training", {}).get("config")
    if data is None and config is None:
        raise ExporterError(f"{path} records no training config, so its splits are unknown: pass --data")
    dataset = load_dataset(data or config["data"])
    if dataset.class_names != meta["class_names"]:
        raise ExporterError(f"dataset classes {dataset.class_names} differ from the version's {meta['class_names']}")
    return meta, {"all": dataset} if data else split_dataset(dataset, TrainConfig.from_json(config))


def evaluate_version(models_dir: str | Path, name: str, version: int, data: str | None = None,
                     out: str | Path | None = None) -> dict:
    """Evaluate an exported SavedModel as served (no .keras file needed) on its test split, or on all of `data`;
    results go to `out` (default runs/<name>-v<version>/evaluation), never into the immutable version."""
    import tensorflow as tf

    from exporter.dataset import decode_all

    path = version_dir(models_dir, name, version)
    meta, parts = version_data(path, data)
    test = parts["all" if data else "test"]
    logits, probabilities = served_outputs(tf.saved_model.load(str(path)), decode_all(test, meta["input_size"][0]))
    out = Path(out) if out else Path("runs") / f"{name}-v{version}" / "evaluation"
    metrics = write_evaluation(out, test.labels, logits, probabilities, meta["class_names"], version=version,
                               temperature=meta.get("temperature", 1.0), data=data or "test split")
    print(f"wrote {out}")
    return metrics
