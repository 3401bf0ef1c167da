"""Evaluation on the run's held-out test split: accuracy, per-class P/R/F1, confusion matrix, curves."""

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


def plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history.get("loss", [])) + 1)
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        ax.plot(epochs, history.get(key, []), label=f"train {key}")
        ax.plot(epochs, history.get(f"val_{key}", []), label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(run_dir: str | Path, data: str | None = None) -> dict:
    """Write `run_dir/evaluation/{metrics.json, confusion_matrix.json, confusion_matrix.png, training_curves.png}`."""
    run_dir = Path(run_dir)
    run_file, model_file = run_dir / "run.json", run_dir / "model.keras"
    if not run_file.is_file() or not model_file.is_file():
        raise ExporterError(f"{run_dir} holds no finished training run (run.json, model.keras): run `train` first")
    import keras

    from exporter.dataset import load_dataset
    from exporter.pipeline import decode_all
    from exporter.train import TrainConfig, split_dataset

    run = json.loads(run_file.read_text())
    cfg = TrainConfig.from_json(run["config"])
    dataset = load_dataset(data or cfg.data)
    if dataset.class_names != run["class_names"]:
        raise ExporterError(f"dataset classes {dataset.class_names} differ from the run's {run['class_names']}")
    test = split_dataset(dataset, cfg)["test"]
    model = keras.saving.load_model(model_file)
    images = decode_all(test, cfg.input_size)
    logits = model.predict(images.astype(np.float32), batch_size=256, verbose=0)
    metrics = classification_metrics(test.labels, logits.argmax(axis=1), dataset.class_names)
    metrics["train_seconds"] = run.get("train_seconds")
    out = run_dir / "evaluation"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "confusion_matrix.json").write_text(json.dumps(metrics["confusion_matrix"], indent=1))
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]["matrix"]), dataset.class_names,
                          out / "confusion_matrix.png")
    history_file = run_dir / "history.json"
    if history_file.is_file():
        plot_history(json.loads(history_file.read_text()), out / "training_curves.png")
    print(f"test accuracy {metrics['accuracy']:.4f} on {metrics['num_test_images']} images; wrote {out}")
    return metrics
