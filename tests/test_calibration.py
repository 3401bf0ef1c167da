"""Calibrated probabilities: the temperature fit and ECE are right on data with a known answer; `calibrate` makes a
new version with exactly the old contract, the old logits and Grad-CAM gradients, and calibrated probabilities;
`evaluate --version` reproduces a version's figures from the SavedModel alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from exporter.calibration import calibration_summary, expected_calibration_error, fit_temperature, softmax
from exporter.errors import ExporterError
from tests.conftest import TINY_CLASSES, make_image
from tests.test_exporter_cli import assert_one_line_error, run_cli


def test_fit_recovers_a_known_temperature():
    """Labels drawn from softmax(z / 2): the logits z are over-confident by exactly T = 2."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (20000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(z, 2.0)])
    t = fit_temperature(z, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    assert expected_calibration_error(softmax(z), labels) > 0.1
    assert expected_calibration_error(softmax(z, t), labels) < 0.015
    assert calibration_summary(softmax(z, t), labels)["nll"] < calibration_summary(softmax(z), labels)["nll"]


def test_ece_by_hand():
    # bin [0.9, 0.967): two answers at 0.9, one right -> |0.5 - 0.9| = 0.4 for half the samples;
    # bin [0.6, 0.667): two at 0.6, both right -> |1 - 0.6| = 0.4 for the other half
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


@pytest.fixture(scope="module")
def calibrated(tiny_export, tmp_path_factory):
    """models/tiny/1 (with an extra asset another tool added) and the calibrated models/tiny/2."""
    from exporter.calibrate import calibrate_version

    models = tmp_path_factory.mktemp("cal")
    shutil.copytree(tiny_export, models / "tiny" / "1")
    (models / "tiny" / "1" / "assets" / "provenance.txt").write_text("any asset travels along\n")
    return models, calibrate_version(models, "tiny", 1)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    return tf.constant(np.stack([make_image(k, rng) for k in TINY_CLASSES * 2]))


def _spec(fn) -> tuple:
    inputs = {k: (v.dtype, v.shape.as_list()) for k, v in fn.structured_input_signature[1].items()}
    outputs = {k: (v.dtype, v.shape.as_list()) for k, v in fn.structured_outputs.items()}
    return inputs, outputs


def test_calibrated_version_keeps_the_contract_logits_and_gradients(calibrated, batch):
    models, v2 = calibrated
    old, new = tf.saved_model.load(str(models / "tiny" / "1")), tf.saved_model.load(str(v2))
    assert set(new.signatures) == set(old.signatures) == {"serving_default", "gradcam", "gradcam_multilayer"}
    for name in old.signatures:
        assert _spec(new.signatures[name]) == _spec(old.signatures[name]), name
    t = json.loads((v2 / "assets" / "metadata.json").read_text())["temperature"]
    assert t != 1.0
    a, b = old.signatures["serving_default"](images=batch), new.signatures["serving_default"](images=batch)
    np.testing.assert_array_equal(a["logits"].numpy(), b["logits"].numpy())
    np.testing.assert_allclose(b["probabilities"].numpy(), softmax(a["logits"].numpy(), t), atol=1e-6)
    classes = tf.constant([0, 1, 2, -1, -1, 0], tf.int32)
    ga = old.signatures["gradcam_multilayer"](images=batch, class_index=classes)
    gb = new.signatures["gradcam_multilayer"](images=batch, class_index=classes)
    for key in ("activations", "gradients", "activations_hires", "gradients_hires", "class_index"):
        np.testing.assert_array_equal(ga[key].numpy(), gb[key].numpy())  # the raw logit's gradients, unchanged
    np.testing.assert_allclose(gb["probabilities"].numpy(), b["probabilities"].numpy(), atol=1e-5)
    g = new.signatures["gradcam"](images=batch, class_index=classes)
    np.testing.assert_allclose(g["probabilities"].numpy(), b["probabilities"].numpy(), atol=1e-5)


def test_calibrated_version_carries_every_asset_and_its_figures(calibrated):
    models, v2 = calibrated
    v1 = models / "tiny" / "1"
    assert (v2 / "assets" / "provenance.txt").read_text() == "any asset travels along\n"
    assert (v2 / "assets" / "class_names.txt").read_text() == (v1 / "assets" / "class_names.txt").read_text()
    assert (v2 / "assets.extra" / "tf_serving_warmup_requests").read_bytes() == \
        (v1 / "assets.extra" / "tf_serving_warmup_requests").read_bytes()
    meta = json.loads((v2 / "assets" / "metadata.json").read_text())
    assert meta["version"] == 2 and meta["calibrated_from"] == 1 and meta["calibration_fit"]["split"] == "val"
    assert meta["training"] == json.loads((v1 / "assets" / "metadata.json").read_text())["training"]
    card = json.loads((v2 / "assets" / "model_card.json").read_text())
    assert card["id"] == "tiny-v2" and card["properties"]["scenecam:temperature"] == meta["temperature"]
    metrics = json.loads((v2 / "evaluation" / "metrics.json").read_text())
    assert metrics["calibration"]["after"] == meta["metrics"]["calibration"]["after"]
    assert metrics["calibration"]["after"]["accuracy"] == metrics["calibration"]["before"]["accuracy"]
    for name in ("confusion_matrix.png", "reliability_diagram.png"):
        assert (v2 / "evaluation" / name).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (models / "tiny").iterdir()) == ["1", "2"]  # no temporary folder left


def test_evaluate_version_reproduces_the_figures_from_the_saved_model(calibrated, tiny_dataset, tmp_path):
    models, v2 = calibrated
    out = run_cli("evaluate", "--version", "2", "--models-dir", str(models), "--name", "tiny",
                  "--out", str(tmp_path / "ev"))
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["calibration"] == json.loads((v2 / "evaluation" / "metrics.json").read_text())["calibration"]
    assert (tmp_path / "ev" / "reliability_diagram.png").stat().st_size > 0
    whole = run_cli("evaluate", "--version", "1", "--models-dir", str(models), "--name", "tiny",
                    "--data", str(tiny_dataset), "--out", str(tmp_path / "all"))
    assert whole.returncode == 0, whole.stderr
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["num_test_images"] == 3 * 24
    assert_one_line_error(run_cli("evaluate", "--version", "7", "--models-dir", str(models), "--name", "tiny"),
                          "not an exported version")


def test_calibrate_refuses_overwrites_and_leaves_nothing_half_written(calibrated, monkeypatch):
    import exporter.calibrate as calibrate_module

    models, _ = calibrated
    assert_one_line_error(run_cli("calibrate", "--version", "1", "--to-version", "2", "--models-dir", str(models),
                                  "--name", "tiny"), "already exists")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(calibrate_module, "_copy_assets", disk_full)
    with pytest.raises(ExporterError, match="disk full"):
        calibrate_module.calibrate_version(models, "tiny", 1, 5)
    assert sorted(p.name for p in (models / "tiny").iterdir()) == ["1", "2"]
