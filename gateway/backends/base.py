"""The one interface both backends implement (KServe-style: load / predict / explain), and its value types."""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.errors import Conflict, NotFound


@dataclass(frozen=True)
class Target:
    """Which version answers: a number, or a label resolved by the backend (TF Serving resolves its own)."""

    model: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class VersionMeta:
    """What the gateway must know about a version, read from the SavedModel's assets/metadata.json."""

    version: int
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    metrics: dict = field(default_factory=dict, compare=False, hash=False)
    card: dict = field(default_factory=dict, compare=False, hash=False)  # STAC MLM model card (assets/model_card.json)
    multiply_adds: int | None = None  # per input, as exported (metadata.json); weighs its tiles in admission

    @classmethod
    def read(cls, version_dir: Path) -> VersionMeta:
        meta = json.loads((version_dir / "assets" / "metadata.json").read_text())
        card_file = version_dir / "assets" / "model_card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        return cls(int(version_dir.name), tuple(meta["class_names"]), tuple(meta["input_size"]),
                   meta.get("metrics", {}), card, meta.get("multiply_adds"))

    @property
    def gsd_m(self) -> float | None:
        """Metres per pixel of a `tile` model (its card's `gsd`); None for an `image` model or a version without one."""
        gsd = self.card.get("properties", {}).get("gsd")
        return float(gsd) if self.is_tile and gsd else None

    @property
    def is_tile(self) -> bool:
        """A tile model reads ground at one scale: larger inputs are resampled and tiled, never squashed."""
        return self.card.get("properties", {}).get("scenecam:input_kind") == "tile"

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        """RGB colour per class from the card's `color_hint`, else a fixed cycle (the class-map palette)."""
        hints = {}
        for output in self.card.get("properties", {}).get("mlm:output", []):
            hints.update({c["value"]: c.get("color_hint") for c in output.get("classification:classes", [])})
        cycle = ("1F77B4", "FF7F0E", "2CA02C", "D62728", "9467BD", "8C564B", "E377C2", "7F7F7F", "BCBD22", "17BECF")
        hexes = [hints.get(i) or cycle[i % len(cycle)] for i in range(len(self.class_names))]
        return [tuple(int(h[j:j + 2], 16) for j in (0, 2, 4)) for h in hexes]


@dataclass(frozen=True)
class ModelConfig:
    """The desired serving state of one model: versions to load and labels onto them (TF Serving's config)."""

    name: str
    versions: tuple[int, ...]
    labels: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass
class Prediction:
    version: int
    probabilities: np.ndarray  # [N, C] float32


@dataclass
class Explanation:
    version: int
    probabilities: np.ndarray  # [N, C]
    class_index: np.ndarray  # [N] the classes explained
    stages: list[tuple[np.ndarray, np.ndarray]]  # [(activations, gradients)] last stage first, each [N, h, w, K]


GRADCAM = "gradcam"  # the last stage: all a single-layer CAM method needs
GRADCAM_MULTILAYER = "gradcam_multilayer"  # plus the previous stage (`*_hires`), for multi-layer methods
STAGE_OUTPUTS = (("activations", "gradients"), ("activations_hires", "gradients_hires"))


def explanation_from(version: int, out: dict[str, np.ndarray]) -> Explanation:
    """A `gradcam` or `gradcam_multilayer` signature's outputs, with the stages it returned, last stage first."""
    stages = [(out[a], out[g]) for a, g in STAGE_OUTPUTS if a in out]
    return Explanation(version, out["probabilities"], out["class_index"], stages)


def load_failed(model: str, version: int, reason: str) -> Conflict:
    """One wording, whichever backend tried, for a version that cannot load: a rollout of it ends at once with it."""
    return Conflict(f"model {model!r} version {version} failed to load: {reason}")


def read_version_metas(model_dir: Path) -> dict[int, VersionMeta]:
    """Every exported version under `models/<name>/` (integer folders with metadata), by version number."""
    if not model_dir.is_dir():
        return {}
    return {
        int(p.name): VersionMeta.read(p)
        for p in sorted(model_dir.iterdir(), key=lambda p: p.name)
        if p.name.isdigit() and (p / "assets" / "metadata.json").is_file()
    }


class Backend(abc.ABC):
    """Runs the SavedModel signatures. Implementations: `local` (in-process TensorFlow) and `tfserving` (gRPC)."""

    applies_config_locally = False  # True: each replica loads versions itself (local); False: a shared server

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self._metas: dict[tuple[str, int], VersionMeta] = {}

    def meta(self, model: str, version: int) -> VersionMeta:
        """Class names and input size of an exported version, read once from its assets."""
        key = (model, version)
        if key not in self._metas:
            path = self.models_dir / model / str(version)
            if not (path / "assets" / "metadata.json").is_file():
                raise NotFound(f"model {model!r} has no exported version {version}")
            self._metas[key] = VersionMeta.read(path)
        return self._metas[key]

    def exported_versions(self, model: str) -> dict[int, VersionMeta]:
        return read_version_metas(self.models_dir / model)

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect / load; must not raise when the backend is down (readiness reports it)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def predict(self, images: np.ndarray, target: Target, timeout: float) -> Prediction:
        """`serving_default` on uint8 [N, H, W, 3] images at the version's input size."""

    @abc.abstractmethod
    async def explain(self, images: np.ndarray, class_index: np.ndarray, target: Target, timeout: float,
                      signature: str = GRADCAM) -> Explanation:
        """`gradcam` (or `gradcam_multilayer`) with class_index int32 [N] (-1: the top class)."""

    @abc.abstractmethod
    async def signatures(self, model: str, version: int) -> frozenset[str]:
        """The signature names a loaded version serves, from its SavedModel: which CAM methods it can answer."""

    @abc.abstractmethod
    async def version_states(self, model: str) -> dict[int, str]:
        """Serving state of each version TF-Serving-style: AVAILABLE, LOADING, UNLOADING, END, ..."""

    @abc.abstractmethod
    async def apply_config(self, configs: list[ModelConfig], timeout: float) -> None:
        """Make the backend serve exactly these versions and labels; returns once every version is AVAILABLE."""
