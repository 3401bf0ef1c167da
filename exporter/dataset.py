"""Reading a folder-per-class image dataset (a directory or a .tar.gz of one), splitting it, and decoding it.

Pixels come from the gateway's own decoder (`gateway.decoding`), so training and evaluation see exactly what the
service feeds the model: TensorFlow's JPEG decoder (its fast integer DCT by default) differs from it by up to 15
levels on EuroSAT's quality-100 tiles. Every file is decoded up front, so a corrupt one is skipped and counted
instead of crashing training an hour in.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from exporter.errors import ExporterError
from gateway.decoding import decode_image, resize
from gateway.errors import GatewayError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 100_000_000  # per dataset image; the gateway's request limit is separate


@dataclass
class Dataset:
    """Encoded image bytes with integer labels; `class_names[i]` names label i."""

    class_names: list[str]
    images: list[bytes]
    labels: np.ndarray
    paths: list[str]
    skipped: list[str] = field(default_factory=list)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(
            self.class_names,
            [self.images[i] for i in idx],
            self.labels[idx],
            [self.paths[i] for i in idx],
        )

    def __len__(self) -> int:
        return len(self.images)


def _iter_directory(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield PurePosixPath(path.relative_to(root).as_posix()), path.read_bytes()


def _iter_tarball(archive: Path):
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.isfile():
                    yield PurePosixPath(member.name), tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":")
        raise ExporterError(f"cannot read archive {archive} ({reason}); pass a directory or a valid .tar.gz") from exc


def _strip_common_root(files: dict[PurePosixPath, bytes]) -> dict[PurePosixPath, bytes]:
    """`eurosat_rgb/Forest/x.jpg` -> `Forest/x.jpg`: descend while everything sits in one folder."""
    while files and all(len(p.parts) > 2 for p in files) and len({p.parts[0] for p in files}) == 1:
        files = {PurePosixPath(*p.parts[1:]): b for p, b in files.items()}
    return files


def _decode(data: bytes, size: int | None = None) -> np.ndarray | None:
    """RGB uint8 as the gateway decodes it (resized to size x size as it resizes for the model), or None."""
    try:
        image = decode_image(data, MAX_PIXELS)
    except GatewayError:
        return None
    return image if size is None else resize(image, (size, size))


def decode_images(blobs: list[bytes], size: int) -> np.ndarray:
    """Encoded images (already checked by `load_dataset`) as uint8 [N, size, size, 3]."""
    if not blobs:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([_decode(b, size) for b in blobs])


def decode_all(data: Dataset, size: int) -> np.ndarray:
    return decode_images(data.images, size)


def load_dataset(source: str | Path) -> Dataset:
    """Load every image under `source/<class>/...`; raise ExporterError on anything a user must fix."""
    source = Path(source)
    if not source.exists():
        raise ExporterError(f"dataset not found: {source}; pass a folder-per-class directory or a .tar.gz of one")
    raw = dict(_iter_tarball(source) if source.is_file() else _iter_directory(source))
    raw = {p: b for p, b in _strip_common_root(raw).items() if not any(s.startswith(".") for s in p.parts)}
    per_class: dict[str, list[PurePosixPath]] = {}
    for path in raw:
        if len(path.parts) >= 2:
            per_class.setdefault(path.parts[0], []).append(path)
    if not per_class:
        raise ExporterError(f"dataset {source} is empty: expected one sub-folder of images per class")
    if len(per_class) < 2:
        raise ExporterError(f"dataset {source} has one class folder ({next(iter(per_class))}): need at least two")
    class_names = sorted(per_class)
    images, labels, paths, skipped = [], [], [], []
    for label, name in enumerate(class_names):
        count = 0
        for path in sorted(per_class[name]):
            data = raw[path]
            if path.suffix.lower() not in IMAGE_SUFFIXES or _decode(data) is None:
                skipped.append(str(path))
                continue
            images.append(data)
            labels.append(label)
            paths.append(str(path))
            count += 1
        if count == 0:
            raise ExporterError(f"class folder '{name}' in {source} holds no readable images: add images or remove it")
    return Dataset(class_names, images, np.asarray(labels, np.int32), paths, skipped)


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float] = (0.1, 0.1), seed: int = 1337
) -> dict[str, np.ndarray]:
    """Deterministic per-class split into train / val / test indices (val and test take `fractions`)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * fractions[0]))
        n_test = max(1, round(len(idx) * fractions[1]))
        if len(idx) < n_val + n_test + 1:
            raise ExporterError(f"class {label} has {len(idx)} images: need at least 3 to split train/val/test")
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
