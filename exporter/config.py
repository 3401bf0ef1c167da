"""Training settings, kept free of TensorFlow imports so the CLI can show their defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    data: str
    run_dir: str
    epochs: int = 40
    batch_size: int = 128
    input_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    dropout: float = 0.2
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 1337
    init_from: str | None = None  # continue from a trained .keras (same architecture), e.g. a low-LR extension

    @classmethod
    def from_json(cls, config: dict, **overrides) -> TrainConfig:
        """A run's config as `run.json` / the version metadata store it (JSON has lists, not tuples)."""
        return cls(**{**config, "widths": tuple(config["widths"]), **overrides})
