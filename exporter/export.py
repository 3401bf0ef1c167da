"""Writing a Keras classifier as a versioned TF Serving SavedModel with `serving_default` and `gradcam` signatures.

The contract (README, "SavedModel contract") is what the gateway and TensorFlow Serving rely on. The version folder
is assembled under a hidden temporary name and renamed into place, so a server polling `models/<name>/` never sees a
half-written version, and an existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from exporter.card import model_card, write_card
from exporter.errors import ExporterError
from exporter.model import multiply_adds

POOLING_TYPES = (keras.layers.GlobalAveragePooling2D,)
VIEWS = 8  # test-time augmentation: the dihedral group of a square tile (4 rotations, each also mirrored)


def dihedral_views(images: tf.Tensor) -> tf.Tensor:
    """[N, H, W, C] square images -> [8N, H, W, C], view-major; view 0 is the identity. Overhead tiles have no 'up',
    so all eight are the same scene (training augments with exactly these)."""
    mirrored = tf.image.flip_left_right(images)
    return tf.concat([tf.image.rot90(x, k) for x in (images, mirrored) for k in range(4)], axis=0)


class GradCamHead:
    """The tensors Grad-CAM needs from any global-average-pooled CNN classifier, found from its graph.

    `features` maps the input to (hi-res activations, Grad-CAM activations, the vector fed to the final Dense);
    logits are recomputed from that Dense layer's kernel so gradients are of the logit even when the model ends in
    a softmax. Probabilities are softmax(logits / temperature) (see calibration.py); logits and gradients stay raw.
    With `tta`, served logits are the mean over the eight dihedral views (8x the forward work); the Grad-CAM
    signatures explain the image as given, for the class the averaged logits choose.
    """

    def __init__(self, model: keras.Model, temperature: float = 1.0, tta: bool = False):
        self.temperature = float(temperature)
        self.tta = bool(tta)
        pools = [layer for layer in model.layers if isinstance(layer, POOLING_TYPES)]
        denses = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        if not pools or not denses or len(model.inputs) != 1:
            raise ExporterError(
                f"model '{model.name}' has no GlobalAveragePooling2D -> Dense head on a single image input: "
                "Grad-CAM needs a CNN classifier with a global-average-pooling head"
            )
        pool, self.dense = pools[-1], denses[-1]
        cam = pool.input
        channels = cam.shape[-1]
        if len(cam.shape) != 4 or self.dense.kernel.shape[0] != channels:
            raise ExporterError(f"the layer before '{pool.name}' is not a 4-D conv output feeding the final Dense")
        self.cam_layer = cam._keras_history[0].name
        hires = self._hires_tensor(model, cam)
        self.hires_layer = hires._keras_history[0].name
        self.features = keras.Model(model.inputs, [hires, cam, self.dense.input], name="gradcam_features")
        shape = model.inputs[0].shape
        if shape[1] is None or shape[2] is None or shape[3] != 3:
            raise ExporterError(f"model input shape {tuple(shape)} is not a fixed-size RGB image [N, H, W, 3]")
        self.input_size = (int(shape[1]), int(shape[2]))
        self.num_classes = int(self.dense.kernel.shape[1])
        if self.tta and shape[1] != shape[2]:
            raise ExporterError(f"test-time augmentation needs a square input; this model takes {tuple(shape)}")

    @staticmethod
    def _hires_tensor(model: keras.Model, cam):
        """The output of the last layer whose spatial size is twice the Grad-CAM layer's (the previous stage)."""
        target = (cam.shape[1] * 2, cam.shape[2] * 2)
        candidates = [
            layer.output
            for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
            and len(getattr(layer.output, "shape", ())) == 4
            and tuple(layer.output.shape[1:3]) == target
        ]
        if not candidates:
            raise ExporterError(f"model has no stage at {target[0]}x{target[1]} before the Grad-CAM layer")
        return candidates[-1]

    def logits(self, pooled: tf.Tensor) -> tf.Tensor:
        return tf.matmul(pooled, self.dense.kernel) + self.dense.bias

    def _other_views(self, images: tf.Tensor) -> tf.Tensor | None:
        """With `tta`, the summed logits of each float image's seven other views (None without): the image's own
        logits come from the caller's forward pass, so no view is computed twice."""
        if not self.tta:
            return None
        n = tf.shape(images)[0]
        others = self.logits(self.features(dihedral_views(images)[n:], training=False)[2])
        return tf.reduce_sum(tf.reshape(others, [VIEWS - 1, n, self.num_classes]), axis=0)

    @staticmethod
    def _served(logits: tf.Tensor, others: tf.Tensor | None) -> tf.Tensor:
        return logits if others is None else (logits + others) / VIEWS

    def predict(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.cast(images, tf.float32)
        logits = self._served(self.logits(self.features(images, training=False)[2]), self._other_views(images))
        return {"probabilities": tf.nn.softmax(logits / self.temperature), "logits": logits}

    def gradcam(self, images: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        """The contract signature, last stage only: its gradient needs no backward pass through any convolution."""
        return self._explain(images, class_index, multilayer=False)

    def gradcam_multilayer(self, images: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Also the previous stage, for multi-layer CAM: backpropagating through the last stage costs about half a
        forward pass more, so only the methods that need it ask for it."""
        return self._explain(images, class_index, multilayer=True)

    def _explain(self, images: tf.Tensor, class_index: tf.Tensor, multilayer: bool) -> dict[str, tf.Tensor]:
        """Activations and d(logit of the chosen class)/d(activations), per image, in inference mode."""
        images = tf.cast(images, tf.float32)
        others = self._other_views(images)  # outside the tape: nothing is differentiated through them
        with tf.GradientTape() as tape:
            hires, cam, pooled = self.features(images, training=False)
            tape.watch([hires, cam])
            logits = self.logits(pooled)
            served = self._served(logits, others)
            chosen = tf.where(class_index < 0, tf.argmax(served, axis=1, output_type=tf.int32), class_index)
            tf.debugging.assert_less(chosen, self.num_classes, message="class_index out of range")
            selected = tf.reduce_sum(logits * tf.one_hot(chosen, self.num_classes), axis=1)
        sources = {"activations": cam, "activations_hires": hires} if multilayer else {"activations": cam}
        grads = tape.gradient(selected, list(sources.values()))
        out = {**sources, "probabilities": tf.nn.softmax(served / self.temperature), "class_index": chosen}
        out.update({name.replace("activations", "gradients"): g for name, g in zip(sources, grads, strict=True)})
        return out


def _next_version(model_root: Path) -> int:
    if not model_root.exists():
        return 1
    versions = [int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _refuse_existing(version_dir: Path) -> None:
    if version_dir.exists():
        raise ExporterError(f"{version_dir} already exists: versions are immutable, pick another --version or omit it")


@contextmanager
def staged_version(final: Path) -> Iterator[Path]:
    """A hidden folder beside `final` (TF Serving ignores non-integer names) to assemble a version in, renamed into
    place only when everything was written: a server polling the model folder never sees half a version."""
    _refuse_existing(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)  # atomic; fails if another writer created `final` meanwhile
    except OSError as exc:
        raise ExporterError(f"could not write {final}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_archive(head: GradCamHead, model: keras.Model, path: Path) -> None:
    h, w = head.input_size
    images = tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(head.features)
    archive.add_endpoint("serving_default", head.predict, input_signature=[images])
    class_index = tf.TensorSpec([None], tf.int32, name="class_index")
    archive.add_endpoint("gradcam", head.gradcam, input_signature=[images, class_index])
    archive.add_endpoint("gradcam_multilayer", head.gradcam_multilayer, input_signature=[images, class_index])
    archive.write_out(str(path), verbose=False)


def _write_warmup(path: Path, input_size: tuple[int, int], name: str) -> None:
    """`assets.extra/tf_serving_warmup_requests`, replayed by `--enable_model_warmup` before a version serves."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:  # the exporter works without tensorflow-serving-api; warm-up is an optimisation
        return
    path.mkdir(parents=True, exist_ok=True)
    images = tf.make_tensor_proto(np.zeros((1, *input_size, 3), np.uint8))
    with tf.io.TFRecordWriter(str(path / "tf_serving_warmup_requests")) as writer:
        for signature in ("serving_default", "gradcam", "gradcam_multilayer"):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
            request.inputs["images"].CopyFrom(images)
            if signature != "serving_default":
                request.inputs["class_index"].CopyFrom(tf.make_tensor_proto(np.array([-1], np.int32)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_model(
    model: keras.Model,
    class_names: list[str],
    models_dir: str | Path = "models",
    name: str = "eurosat",
    version: int | None = None,
    extra_metadata: dict | None = None,
    evaluation_dir: Path | None = None,
    gsd_m: float | None = None,
    temperature: float = 1.0,
    tta: bool = False,
) -> Path:
    """Write `models_dir/name/version/` atomically and return it. `gsd_m` makes it a tile model (see card.py);
    `temperature` calibrates the probabilities (see calibration.py); `tta` averages the eight dihedral views."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ExporterError(f"model name {name!r} must be letters, digits, '-' or '_'")
    head = GradCamHead(model, temperature, tta)
    if len(class_names) != head.num_classes:
        raise ExporterError(f"{len(class_names)} class names given for a model with {head.num_classes} outputs")
    model_root = Path(models_dir) / name
    version = _next_version(model_root) if version is None else version
    if version < 1:
        raise ExporterError(f"version must be a positive integer, got {version}")
    final = model_root / str(version)
    with staged_version(final) as tmp:
        _write_archive(head, model, tmp)
        assets = tmp / "assets"
        assets.mkdir(exist_ok=True)
        (assets / "class_names.txt").write_text("\n".join(class_names) + "\n")
        metadata = {
            "name": name,
            "version": version,
            "class_names": class_names,
            "input_size": list(head.input_size),
            "gradcam_layer": head.cam_layer,
            "hires_layer": head.hires_layer,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "temperature": head.temperature,
            "tta": VIEWS if tta else None,
            "multiply_adds": multiply_adds(model) * (VIEWS if tta else 1),  # per input, as served
            **(extra_metadata or {}),
        }
        (assets / "metadata.json").write_text(json.dumps(metadata, indent=1))
        write_card(tmp, model_card(name, version, class_names, head.input_size, gsd_m, tf.__version__,
                                   metadata.get("temperature"), metadata["tta"]))
        _write_warmup(tmp / "assets.extra", head.input_size, name)
        if evaluation_dir is not None and evaluation_dir.is_dir():
            shutil.copytree(evaluation_dir, tmp / "evaluation")
    return final


def load_keras_model(path: str | Path) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise ExporterError(f"model file not found: {path}; pass a trained .keras file")
    if path.suffix != ".keras":
        raise ExporterError(f"{path} is not a .keras file: save the model with model.save('model.keras')")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad archive
        raise ExporterError(f"cannot load {path} as a Keras model: {str(exc).splitlines()[0]}") from exc


def export_from_run(
    run_dir: str | Path,
    model_path: str | None,
    models_dir: str | Path,
    name: str,
    version: int | None,
    class_names_file: str | None = None,
    gsd_m: float | None = None,
    tta: bool = False,
) -> Path:
    """Export a training run (or any .keras file), with its class names, metrics and evaluation plots. With `tta`
    the temperature is fitted again, on the run's validation split as the eight-view average serves it."""
    run_dir = Path(run_dir)
    if version is not None:
        _refuse_existing(Path(models_dir) / name / str(version))  # fail before the slow model load
    if tta and (model_path is not None or not (run_dir / "run.json").is_file()):
        raise ExporterError("--tta fits its temperature on the run's validation split: export a run (--run-dir)")
    model = load_keras_model(model_path or run_dir / "model.keras")
    run_file = run_dir / "run.json"
    run = json.loads(run_file.read_text()) if model_path is None and run_file.is_file() else {}
    if class_names_file:
        try:
            class_names = [line.strip() for line in Path(class_names_file).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ExporterError(f"cannot read class names file {class_names_file}: {exc.strerror}") from exc
    elif "class_names" in run:
        class_names = run["class_names"]
    else:
        raise ExporterError("no class names: pass --class-names FILE (one name per line, index order)")
    metrics_file = run_dir / "evaluation" / "metrics.json"
    extra = {}
    if run:
        extra["training"] = {k: run[k] for k in ("config", "split_sizes", "train_seconds") if k in run}
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            extra["metrics"] = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "per_class")}
    evaluation = run_dir / "evaluation" if run else None
    temperature = run.get("temperature", 1.0)
    if tta:  # the run's metrics and evaluation are of single views: evaluate the version (evaluate --version N)
        temperature, evaluation = tta_temperature(model, run), None
        extra.pop("metrics", None)
        extra["temperature_single_view"] = run.get("temperature", 1.0)
    return export_model(model, class_names, models_dir, name, version, extra, evaluation, gsd_m, temperature, tta)


def tta_temperature(model: keras.Model, run: dict) -> float:
    """T fitted on the run's validation split to the eight-view mean logits (they are less extreme than one view's)."""
    from exporter.calibration import fit_temperature
    from exporter.config import TrainConfig
    from exporter.dataset import decode_all, load_dataset
    from exporter.train import split_dataset

    cfg = TrainConfig.from_json(run["config"])
    val = split_dataset(load_dataset(cfg.data), cfg)["val"]
    head = GradCamHead(model, tta=True)
    images = decode_all(val, cfg.input_size)
    logits = np.concatenate([head.predict(tf.constant(images[i:i + 256]))["logits"].numpy()
                             for i in range(0, len(images), 256)])
    return round(fit_temperature(logits, val.labels), 4)
