"""The model card: how a version reads its input, as a STAC Item with the Machine Learning Model (`mlm:`) extension.

It says whether the model reads ground at one scale (`tile`: a fixed window at a ground sample distance, so a larger
scene must be resampled and tiled) or is a photo-scene classifier (`image`: the whole picture is resized), which bands
it expects, how values are scaled and which classes it outputs. The gateway reads it from `assets/model_card.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from exporter.errors import ExporterError

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
CARD_FILE = "model_card.json"
# Fixed colours for known land-cover classes, so every map of every version looks the same; others get a default cycle.
KNOWN_COLORS = {
    "AnnualCrop": "E6C84B", "Forest": "1E6B2F", "HerbaceousVegetation": "8CC06B", "Highway": "8C8C8C",
    "Industrial": "B03A8C", "Pasture": "C8E67A", "PermanentCrop": "D98C3A", "Residential": "E0413A",
    "River": "3A8FE0", "SeaLake": "16357A",
}
CYCLE = ("1F77B4", "FF7F0E", "2CA02C", "D62728", "9467BD", "8C564B", "E377C2", "7F7F7F", "BCBD22", "17BECF")


def model_card(name: str, version: int, class_names: list[str], input_size: tuple[int, int],
               gsd_m: float | None, framework_version: str, temperature: float | None = None,
               tta: int | None = None) -> dict:
    """A STAC Item: `gsd_m` given makes it a `tile` model read at that ground resolution, None an `image` model."""
    if gsd_m is not None and not gsd_m > 0:
        raise ExporterError(f"--gsd-m must be a positive number of metres per pixel, got {gsd_m}")
    h, w = input_size
    kind = "tile" if gsd_m is not None else "image"
    classes = [{"value": i, "name": n, "color_hint": KNOWN_COLORS.get(n, CYCLE[i % len(CYCLE)])}
               for i, n in enumerate(class_names)]
    properties = {
        "datetime": None,
        "start_datetime": "1900-01-01T00:00:00Z",
        "end_datetime": "9999-12-31T23:59:59Z",
        "mlm:name": f"{name}-v{version}",
        "mlm:architecture": "ResNet",
        "mlm:tasks": ["classification", "scene-classification"],
        "mlm:framework": "tensorflow",
        "mlm:framework_version": framework_version,
        "mlm:input": [{
            "name": "RGB tile" if kind == "tile" else "RGB image",
            "bands": ["red", "green", "blue"],
            "input": {"shape": [-1, h, w, 3], "dim_order": ["batch", "height", "width", "channel"],
                      "data_type": "uint8"},
            # scaling to [-1, 1] happens inside the SavedModel: clients send 8-bit values as they are
            "value_scaling": [{"type": "min-max", "minimum": 0, "maximum": 255}],
            "resize_type": None if kind == "tile" else "interpolation-area",
        }],
        "mlm:output": [{
            "name": "probabilities",
            "tasks": ["classification"],
            "result": {"shape": [-1, len(class_names)], "dim_order": ["batch", "class"], "data_type": "float32"},
            "classification:classes": classes,
        }],
        # how the gateway applies it: `tile` covers a larger input with windows at `gsd`; `image` resizes it whole
        "scenecam:input_kind": kind,
    }
    if gsd_m is not None:
        properties["gsd"] = float(gsd_m)
    if temperature is not None:
        properties["scenecam:temperature"] = float(temperature)
    if tta:  # served probabilities average this many flips/rotations of each input (8x the forward work)
        properties["scenecam:test_time_augmentation"] = {"views": int(tta), "transforms": "dihedral"}
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA],
        "id": f"{name}-v{version}",
        "geometry": None,
        "properties": properties,
        "assets": {"model": {"href": "./..", "type": "application/x-tensorflow-savedmodel",
                             "roles": ["mlm:model"], "mlm:artifact_type": "tf.saved_model"}},
        "links": [],
    }


def write_card(version_dir: Path, card: dict) -> Path:
    """Write `assets/model_card.json`, atomically (a server may be reading the version)."""
    path = version_dir / "assets" / CARD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=1))
    tmp.replace(path)
    return path


def card_for_version(version_dir: Path, gsd_m: float | None) -> dict:
    """The card of an already exported version (from its metadata.json), e.g. one exported before cards existed."""
    meta_file = version_dir / "assets" / "metadata.json"
    if not meta_file.is_file():
        raise ExporterError(f"{version_dir} is not an exported version (no assets/metadata.json)")
    meta = json.loads(meta_file.read_text())
    return model_card(meta["name"], int(meta["version"]), meta["class_names"], tuple(meta["input_size"]), gsd_m,
                      meta.get("tensorflow_version", "unknown"), meta.get("temperature"), meta.get("tta"))
