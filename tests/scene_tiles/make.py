"""Regenerate tests/scene_tiles/: 16 EuroSAT test-split tiles per class (never seen in training or model selection).

Scenes for the scene-scale tests are assembled from these (blocks of 2x2 same-class tiles, known class per tile).
The split is the exporter's own (seed 1337, stratified), so these tiles are in no model's training or validation set.
Run: `.venv/bin/python tests/scene_tiles/make.py [path/to/eurosat_rgb_trainval.tar.gz]`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_CLASS = 16


def main(archive: str) -> None:
    sys.path.insert(0, str(HERE.parent.parent))
    from exporter.__main__ import DEFAULTS
    from exporter.dataset import load_dataset
    from exporter.train import split_dataset

    test = split_dataset(load_dataset(archive), DEFAULTS)["test"]
    for label, name in enumerate(test.class_names):
        folder = HERE / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        picked = [i for i in range(len(test)) if test.labels[i] == label][1 : PER_CLASS + 1]  # [0] is tests/samples
        for n, i in enumerate(picked):
            (folder / f"{n:02d}.jpg").write_bytes(test.images[i])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared/data/eurosat_rgb_trainval.tar.gz"))
