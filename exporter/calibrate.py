"""A calibrated new version from an exported one, without its .keras file: the same three signatures with the same
inputs and outputs, whose probabilities are softmax(logits / T) for a T fitted on the validation split.

The new SavedModel is a tf.Module that calls the loaded version's concrete functions, so logits, activations and the
Grad-CAM gradients (of the raw class logit) are computed by exactly the same graph as before.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tensorflow as tf

from exporter.calibration import calibration_summary, fit_temperature, softmax
from exporter.dataset import decode_all
from exporter.errors import ExporterError
from exporter.evaluate import served_outputs, version_data, version_dir, write_evaluation
from exporter.export import _next_version, _refuse_existing, staged_version

SIGNATURES = ("serving_default", "gradcam", "gradcam_multilayer")


class TemperatureScaled(tf.Module):
    """The loaded version's signatures with probabilities softmax(logits / T). The Grad-CAM signatures return
    probabilities but no logits; log p equals logits / T_source up to a per-image constant, so
    softmax(log p * T_source / T) is the same distribution without a second forward pass."""

    def __init__(self, loaded, temperature: float, source_temperature: float = 1.0):
        super().__init__()
        self.loaded = loaded  # tracks the variables the concrete functions read
        self.temperature = tf.constant(temperature, tf.float32)
        self.rescale = tf.constant(source_temperature / temperature, tf.float32)
        missing = [s for s in SIGNATURES if s not in loaded.signatures]
        if missing:
            raise ExporterError(f"the source version lacks the signature(s) {missing}: cannot keep the contract")
        serving, gradcam = loaded.signatures["serving_default"], loaded.signatures["gradcam"]
        images = serving.structured_input_signature[1]["images"]
        class_index = gradcam.structured_input_signature[1]["class_index"]
        # attributes as well as signatures, like the Keras export: `saved_model_cli show --all` lists the same
        self.serving_default = tf.function(self._serving, input_signature=[images])
        self.gradcam = tf.function(self._explainer("gradcam"), input_signature=[images, class_index])
        self.gradcam_multilayer = tf.function(self._explainer("gradcam_multilayer"),
                                              input_signature=[images, class_index])

    def _serving(self, images):
        out = dict(self.loaded.signatures["serving_default"](images=images))
        out["probabilities"] = tf.nn.softmax(out["logits"] / self.temperature)
        return out

    def _explainer(self, name: str):
        def explain(images, class_index):
            out = dict(self.loaded.signatures[name](images=images, class_index=class_index))
            log_p = tf.math.log(tf.maximum(out["probabilities"], float(np.finfo(np.float32).tiny)))
            out["probabilities"] = tf.nn.softmax(log_p * self.rescale)
            return out

        return explain


def _copy_assets(source: Path, tmp: Path, meta: dict) -> None:
    """Everything the source version carries (class names, model card, warm-up requests, ...), then the patched
    metadata and a model card for the new version."""
    for folder in ("assets", "assets.extra"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, tmp / folder, dirs_exist_ok=True)
    (tmp / "assets" / "metadata.json").write_text(json.dumps(meta, indent=1))
    card_file = source / "assets" / "model_card.json"
    if card_file.is_file():
        from exporter.card import card_for_version, write_card

        gsd = json.loads(card_file.read_text()).get("properties", {}).get("gsd")
        write_card(tmp, card_for_version(tmp, gsd))


def calibrate_version(models_dir: str | Path, name: str, version: int, new_version: int | None = None) -> Path:
    """Fit T on `version`'s validation split and write `models_dir/name/new_version/` (default: next free),
    atomically, with its test-split evaluation (before / after) in `evaluation/`."""
    source = version_dir(models_dir, name, version)
    root = source.parent
    new_version = _next_version(root) if new_version is None else new_version
    if new_version < 1:
        raise ExporterError(f"version must be a positive integer, got {new_version}")
    final = root / str(new_version)
    _refuse_existing(final)  # before the slow part
    loaded = tf.saved_model.load(str(source))
    meta, parts = version_data(source)
    size = meta["input_size"][0]
    val_labels, test_labels = parts["val"].labels, parts["test"].labels
    val_logits, _ = served_outputs(loaded, decode_all(parts["val"], size))
    temperature = fit_temperature(val_logits, val_labels)
    module = TemperatureScaled(loaded, temperature, meta.get("temperature", 1.0))
    test_images = decode_all(parts["test"], size)
    with staged_version(final) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={s: getattr(module, s) for s in SIGNATURES})
        logits, probabilities = served_outputs(tf.saved_model.load(str(tmp)), test_images)
        report = write_evaluation(tmp / "evaluation", test_labels, logits, probabilities, meta["class_names"],
                                  version=new_version, temperature=temperature)
        meta = {
            **meta,
            "version": new_version,
            "temperature": temperature,
            "calibrated_from": version,
            "calibration_fit": {"split": "val", "images": len(val_labels),
                                "before": calibration_summary(softmax(val_logits), val_labels),
                                "after": calibration_summary(softmax(val_logits, temperature), val_labels)},
            "metrics": {k: v for k, v in report.items() if k not in ("confusion_matrix", "per_class")},
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _copy_assets(source, tmp, meta)
    return final
