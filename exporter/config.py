"""Training settings and the run's checkpoint pointer, kept free of TensorFlow imports so the CLI can show defaults
and refuse a bad `--resume` without loading it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from exporter.errors import ExporterError

STATE_FILE = "checkpoint.json"  # the commit point of a checkpoint: written last, atomically
SAME_SPLIT = ("data", "input_size", "val_fraction", "test_fraction", "seed")  # settings that fix each split's images


@dataclass
class TrainConfig:
    data: str
    run_dir: str
    epochs: int = 40
    batch_size: int = 128
    input_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 2
    stem_stride: int = 2  # 1: the first stage at full resolution
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    dropout: float = 0.2
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 1337
    init_from: str | None = None  # continue from a trained .keras (same architecture), e.g. a low-LR extension
    teachers: tuple[str, ...] = ()  # .keras models whose 8-view class distribution is the target (distill.py)
    mixup: float = 0.0  # Beta(a, a) blends of two views for the teachers to label (accelerated function matching)

    @classmethod
    def from_json(cls, config: dict, **overrides) -> TrainConfig:
        """A run's config as `run.json` / the version metadata store it (JSON has lists, not tuples)."""
        return cls(**{**config, "widths": tuple(config["widths"]), "teachers": tuple(config.get("teachers", ())),
                      **overrides})

    @property
    def schedule_warmup_epochs(self) -> int:
        """Warm-up actually used: at most a quarter of the run, so a short run still reaches (and decays from) its
        peak learning rate instead of spending every step below it (issue 15)."""
        return min(self.warmup_epochs, self.epochs // 4)


def differing(a: TrainConfig, b: TrainConfig, keys: tuple[str, ...]) -> list[str]:
    """The settings among `keys` on which two runs differ."""
    return [k for k in keys if getattr(a, k) != getattr(b, k)]


def read_state(run_dir: str | Path) -> dict | None:
    """The last completed epoch's checkpoint record of a run directory, or None if it has none."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExporterError(f"cannot read checkpoint record {path}: {exc}") from exc


def require_state(run_dir: str | Path) -> dict:
    state = read_state(run_dir)
    if state is None:
        raise ExporterError(f"{run_dir} holds no checkpoint ({STATE_FILE}) to resume: train without --resume first")
    return state


def resume_config(run_dir: str | Path, given: TrainConfig, defaults: TrainConfig) -> TrainConfig:
    """The settings a resumed run continues with: its own. A flag given with a different value is refused, since
    changing e.g. --epochs mid-run would change the schedule the first part was trained on."""
    saved = TrainConfig.from_json(require_state(run_dir)["config"], run_dir=str(run_dir))
    changed = [
        f"--{name.replace('_', '-')} (run: {getattr(saved, name)}, given: {value})"
        for name, value in asdict(given).items()
        if name not in ("run_dir", "data") and value != getattr(defaults, name) and value != getattr(saved, name)
    ]
    if changed:
        raise ExporterError(f"--resume continues {run_dir} with its own settings; drop {', '.join(changed)}")
    return replace(saved, data=given.data) if given.data != defaults.data else saved  # the data may have moved


def write_atomically(path: Path, text: str) -> None:
    """Beside the final name, then renamed over it: a cut leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model_atomically(model, path: Path) -> None:
    """`write_atomically` for a Keras model (the temporary name keeps the .keras suffix Keras insists on)."""
    tmp = path.with_name(f".tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)
