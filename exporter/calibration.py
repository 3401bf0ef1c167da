"""Temperature scaling and the figures that judge it: expected calibration error, NLL, reliability diagrams.

Label smoothing trains a network to say "90% sure" even when it is right 97% of the time. One scalar T, fitted on
the validation split by minimising the NLL of softmax(logits / T), fixes the confidence without touching the ranking
(so accuracy and every argmax stay exactly the same). NumPy only: the fit is a 1-D convex problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.1, 10.0  # a fit outside this says the validation split is too small to trust


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: count, mean confidence and accuracy of the top-1 answers."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct, bins) / count
    return {"count": count, "confidence": np.nan_to_num(mean_conf), "accuracy": np.nan_to_num(accuracy)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of (share of samples) x |accuracy - mean confidence| (Guo et al. 2017)."""
    r = reliability(probabilities, labels, bins)
    return float((r["count"] / max(1, len(labels)) * np.abs(r["accuracy"] - r["confidence"])).sum())


def calibration_summary(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "ece_15_bins": round(expected_calibration_error(probabilities, labels), 4),
        "nll": round(nll(probabilities, labels), 4),
        "mean_confidence": round(float(probabilities.max(axis=1).mean()), 4),
        "accuracy": round(float((probabilities.argmax(axis=1) == labels).mean()), 4),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T NLL(softmax(logits / T)). With b = 1/T the NLL is convex in b (its second derivative is the
    variance of the logits under the softmax), so bisecting the sign of its derivative over log b is exact."""
    z = logits.astype(np.float64)
    z_true = z[np.arange(len(labels)), labels]

    def slope(b: float) -> float:  # d NLL / d b = E_softmax(b z)[z] - z_true, averaged
        p = softmax(z, 1 / b)
        return float(((p * z).sum(axis=1) - z_true).mean())

    lo, hi = np.log(1 / MAX_TEMPERATURE), np.log(1 / MIN_TEMPERATURE)
    if slope(np.exp(hi)) <= 0:  # no validation errors: sharper always looks better; cap rather than diverge
        return MIN_TEMPERATURE
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(np.exp(mid)) < 0 else (lo, mid)
    return float(np.exp(-(lo + hi) / 2))


def plot_reliability(curves: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    """One reliability diagram per named set of probabilities (e.g. before / after calibration), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.6), squeeze=False)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for ax, (name, probs) in zip(axes[0], curves.items(), strict=True):
        r = reliability(probs, labels)
        filled = r["count"] > 0
        ax.bar(edges[:-1][filled], r["accuracy"][filled], width=1 / ECE_BINS, align="edge", edgecolor="black",
               color="tab:blue", label="accuracy")
        gap = (r["confidence"] - r["accuracy"])[filled]
        ax.bar(edges[:-1][filled], np.abs(gap), bottom=np.minimum(r["confidence"], r["accuracy"])[filled],
               width=1 / ECE_BINS, align="edge", fill=False, hatch="//", edgecolor="tab:red",
               label="gap to mean confidence")
        for x, y, n in zip(edges[:-1][filled], np.maximum(r["confidence"], r["accuracy"])[filled],
                           r["count"][filled], strict=True):
            ax.text(x + 0.5 / ECE_BINS, y + 0.01, str(n), ha="center", va="bottom", rotation=90,
                    fontsize=7)  # images in the bin, upright so that neighbouring 4-digit counts do not overlap
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        s = calibration_summary(probs, labels)
        ax.set_title(f"{name}: ECE {s['ece_15_bins']:.4f}, NLL {s['nll']:.3f}", fontsize=10)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.12)  # headroom for the counts above full bins, clear of the title
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(loc="lower left", fontsize=8)  # bins start above 1/C: the top left holds their counts
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
