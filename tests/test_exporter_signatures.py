"""The SavedModel contract: signature names, dtypes and shapes, and Grad-CAM gradients that are exact."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_CLASSES, make_image


@pytest.fixture(scope="module")
def loaded(tiny_export):
    return tf.saved_model.load(str(tiny_export))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(5)
    return np.stack([make_image(k, rng) for k in TINY_CLASSES * 2])


def test_signatures_names_dtypes_shapes(loaded, batch):
    assert set(loaded.signatures) == {"serving_default", "gradcam", "gradcam_multilayer"}
    serving = loaded.signatures["serving_default"]
    assert serving.structured_input_signature[1]["images"].dtype == tf.uint8
    assert serving.structured_input_signature[1]["images"].shape.as_list() == [None, 32, 32, 3]
    out = serving(images=tf.constant(batch))
    assert set(out) == {"probabilities", "logits"}
    assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (6, 3)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1, atol=1e-5)

    gradcam = loaded.signatures["gradcam"]
    spec = gradcam.structured_input_signature[1]
    assert spec["class_index"].dtype == tf.int32 and spec["class_index"].shape.as_list() == [None]
    g = gradcam(images=tf.constant(batch), class_index=tf.constant([-1] * 6, tf.int32))
    assert set(g) == {"activations", "gradients", "probabilities", "class_index"}
    assert g["activations"].shape == g["gradients"].shape == (6, 8, 8, 16)
    assert g["class_index"].dtype == tf.int32 and g["probabilities"].shape == (6, 3)

    multi = loaded.signatures["gradcam_multilayer"](images=tf.constant(batch), class_index=tf.constant([-1] * 6))
    assert set(multi) == {*g, "activations_hires", "gradients_hires"}
    assert multi["activations_hires"].shape == multi["gradients_hires"].shape == (6, 16, 16, 8)
    for key in g:  # the same last-stage answer, with the previous stage added
        np.testing.assert_allclose(multi[key].numpy(), g[key].numpy(), rtol=1e-5, atol=1e-7)


def test_assets_describe_the_version(tiny_export):
    meta = json.loads((tiny_export / "assets" / "metadata.json").read_text())
    assert meta["class_names"] == sorted(TINY_CLASSES)
    assert meta["input_size"] == [32, 32]
    assert meta["gradcam_layer"] == "gradcam_features"
    assert meta["tensorflow_version"] == tf.__version__
    assert "accuracy" in meta["metrics"]
    assert (tiny_export / "assets" / "class_names.txt").read_text().split() == sorted(TINY_CLASSES)
    for name in ("metrics.json", "confusion_matrix.json", "confusion_matrix.png", "training_curves.png",
                 "reliability_diagram.png"):
        assert (tiny_export / "evaluation" / name).stat().st_size > 0
    assert (tiny_export / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0


def test_probabilities_are_temperature_scaled_logits_stay_raw(loaded, tiny_run, tiny_export, batch):
    """The run's validation-fitted temperature is baked into every signature's probabilities, and only there."""
    from exporter.calibration import softmax

    t = json.loads((tiny_export / "assets" / "metadata.json").read_text())["temperature"]
    assert t == json.loads((tiny_run / "run.json").read_text())["temperature"] != 1.0
    out = loaded.signatures["serving_default"](images=tf.constant(batch))
    model = keras.saving.load_model(tiny_run / "model.keras")
    np.testing.assert_allclose(out["logits"].numpy(), model(batch.astype(np.float32), training=False).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(), softmax(out["logits"].numpy(), t), atol=1e-6)
    g = loaded.signatures["gradcam"](images=tf.constant(batch), class_index=tf.constant([-1] * 6, tf.int32))
    np.testing.assert_allclose(g["probabilities"].numpy(), out["probabilities"].numpy(), atol=1e-6)
    calibration = json.loads((tiny_export / "evaluation" / "metrics.json").read_text())["calibration"]
    assert set(calibration) == {"before", "after"} and "ece_15_bins" in calibration["after"]


def _tape_gradients(model: keras.Model, images: np.ndarray, classes: np.ndarray):
    """Reference: split the Keras model at the Grad-CAM layer and differentiate the logit eagerly."""
    cam = model.get_layer("gradcam_features").output
    feats = keras.Model(model.inputs, [cam, model.get_layer("pool").input])
    dense = model.get_layer("logits")
    with tf.GradientTape() as tape:
        a, _ = feats(tf.cast(images, tf.float32), training=False)
        tape.watch(a)
        logits = dense(tf.reduce_mean(a, axis=[1, 2]))
        selected = tf.gather(logits, classes, batch_dims=1)
    return a.numpy(), tape.gradient(selected, a).numpy(), logits.numpy()


def test_gradients_match_gradient_tape(loaded, tiny_run, batch):
    model = keras.saving.load_model(tiny_run / "model.keras")
    classes = np.array([0, 1, 2, 2, 1, 0], np.int32)
    g = loaded.signatures["gradcam"](images=tf.constant(batch), class_index=tf.constant(classes))
    a_ref, g_ref, _ = _tape_gradients(model, batch, classes)
    np.testing.assert_allclose(g["activations"].numpy(), a_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["gradients"].numpy(), g_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(g["class_index"].numpy(), classes)
    assert np.abs(g_ref).max() > 0


def test_each_image_is_independent_of_the_batch(loaded, batch):
    classes = np.array([2, 0, 1, 1, 0, 2], np.int32)
    signature = loaded.signatures["gradcam_multilayer"]
    whole = signature(images=tf.constant(batch), class_index=tf.constant(classes))
    for i in (0, 4):
        alone = signature(images=tf.constant(batch[i : i + 1]), class_index=tf.constant(classes[i : i + 1]))
        for key in ("gradients", "gradients_hires", "probabilities"):
            np.testing.assert_allclose(whole[key].numpy()[i], alone[key].numpy()[0], rtol=1e-4, atol=1e-6)


def test_minus_one_explains_the_argmax(loaded, batch):
    g = loaded.signatures["gradcam"](images=tf.constant(batch), class_index=tf.constant([-1] * 6, tf.int32))
    np.testing.assert_array_equal(g["class_index"].numpy(), g["probabilities"].numpy().argmax(axis=1))
    logits = loaded.signatures["serving_default"](images=tf.constant(batch))["logits"].numpy()
    np.testing.assert_array_equal(g["class_index"].numpy(), logits.argmax(axis=1))


def test_out_of_range_class_is_an_error(loaded, batch):
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["gradcam"](images=tf.constant(batch[:1]), class_index=tf.constant([3], tf.int32))


def test_tta_serves_the_mean_over_eight_views_and_explains_the_image_as_given(tiny_run, tmp_path, batch):
    """`export --tta`: logits are the mean of the eight flips/rotations' logits, the temperature is fitted again to
    them, the Grad-CAM signatures explain the unrotated image for the class the averaged logits choose."""
    from exporter.calibration import softmax
    from exporter.export import export_from_run
    from exporter.model import multiply_adds

    path = export_from_run(tiny_run, None, tmp_path, "tiny", None, tta=True)
    meta = json.loads((path / "assets" / "metadata.json").read_text())
    card = json.loads((path / "assets" / "model_card.json").read_text())
    assert meta["tta"] == 8 and card["properties"]["scenecam:test_time_augmentation"]["views"] == 8
    assert {"temperature", "temperature_single_view"} <= set(meta)
    model = keras.saving.load_model(tiny_run / "model.keras")
    assert meta["multiply_adds"] == 8 * multiply_adds(model) > 0  # admission weighs its tiles 8x
    views = [np.rot90(x, k, axes=(1, 2)) for x in (batch, batch[:, :, ::-1]) for k in range(4)]
    expected = np.mean([model(v.astype(np.float32), training=False).numpy() for v in views], axis=0)
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](images=tf.constant(batch))
    np.testing.assert_allclose(out["logits"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(out["probabilities"].numpy(), softmax(expected, meta["temperature"]), atol=1e-5)
    g = loaded.signatures["gradcam"](images=tf.constant(batch), class_index=tf.constant([-1] * 6, tf.int32))
    np.testing.assert_array_equal(g["class_index"].numpy(), expected.argmax(axis=1))
    _, g_ref, _ = _tape_gradients(model, batch, g["class_index"].numpy())
    np.testing.assert_allclose(g["gradients"].numpy(), g_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g["probabilities"].numpy(), out["probabilities"].numpy(), atol=1e-6)


def test_tta_of_a_bare_keras_file_is_refused(tiny_run, tmp_path):
    from exporter.errors import ExporterError
    from exporter.export import export_from_run

    names = tmp_path / "classes.txt"
    names.write_text("\n".join(sorted(TINY_CLASSES)))
    with pytest.raises(ExporterError, match="validation split"):
        export_from_run(tmp_path, str(tiny_run / "model.keras"), tmp_path / "models", "tiny", None,
                        class_names_file=str(names), tta=True)
    assert not (tmp_path / "models" / "tiny").exists() or not any((tmp_path / "models" / "tiny").iterdir())


def test_multiply_adds_count_every_kernel_at_every_output_position():
    """What admission weighs a version's tiles by: here 3x3x3x4 per position at 4x4 (stride 2), then 4x2 dense."""
    from exporter.model import multiply_adds

    inner = keras.Sequential([keras.Input((4, 4, 4)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    x = keras.Input((8, 8, 3))
    y = inner(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)))
    assert multiply_adds(keras.Model(x, y)) == 4 * 4 * 3 * 3 * 3 * 4 + 4 * 2


def test_a_full_resolution_stem_explains_on_a_grid_twice_as_fine_for_four_times_the_work(tmp_path, batch):
    """`--stem-stride 1` keeps the first stage at the input's resolution: the exported Grad-CAM activations are
    twice as fine per side, and the multiply-adds that admission weighs tiles by are four times the stride-2 ones."""
    from exporter.export import export_model
    from exporter.model import build_resnet, multiply_adds

    grids, work = {}, {}
    for stride in (2, 1):
        model = build_resnet(3, 32, (8, 16), blocks_per_stage=1, stem_stride=stride)
        version = export_model(model, sorted(TINY_CLASSES), tmp_path, "tiny", stride)
        g = tf.saved_model.load(str(version)).signatures["gradcam"]
        out = g(images=tf.constant(batch), class_index=tf.constant([-1] * len(batch), tf.int32))
        grids[stride] = tuple(out["activations"].shape[1:3])
        work[stride] = json.loads((version / "assets" / "metadata.json").read_text())["multiply_adds"]
        assert work[stride] == multiply_adds(model)
    assert grids == {2: (8, 8), 1: (16, 16)}
    assert 3.9 < work[1] / work[2] <= 4  # the dense layer's work does not grow
