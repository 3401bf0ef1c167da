"""`python -m bench.scene_quality`: how right scene answers are, on scenes assembled from EuroSAT test-split tiles.

Per-tile accuracy of the class map for PNG and GeoTIFF at 10 m and 5 m, the same scenes squashed into one tile (the
old behaviour) for contrast, `/predict` composition error, and each CAM method's share of the scene heat map inside
the explained class's tiles. Runs the gateway's core in-process with the local backend (no HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


async def measure(models_dir: Path, model: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from gateway import cam
    from gateway.app import build
    from gateway.core import CamOptions, ClassChoice, Pin
    from gateway.settings import Settings
    from tests.scenes import CLASSES, assemble, at_gsd, geotiff, per_tile_accuracy, random_blocks

    core, manager = build(Settings(models_dir=models_dir, model_name=model, grpc_port=0, request_timeout_s=300))
    await core.backend.start()
    await manager.sync(force=True)
    scenes = [assemble(random_blocks(5, 8, seed), seed) for seed in range(4)]  # 4 x 160 tiles, each tile 4 times
    truth = np.concatenate([t.ravel() for _, t in scenes])
    report: dict = {"scenes": len(scenes), "tiles": int(truth.size), "accuracy": {}}
    for kind in ("png", "geotiff"):
        for gsd in (10.0, 5.0):
            hits = []
            for image, tiles in scenes:
                pixels = at_gsd(image, gsd)
                data = _png(pixels) if kind == "png" else geotiff(pixels, gsd)
                result = await core.classmap(data, gsd if kind == "png" and gsd != 10 else None, Pin())
                hits.append(per_tile_accuracy(result.classmap.classes, tiles) * tiles.size)
            report["accuracy"][f"{kind}_{gsd:g}m"] = round(sum(hits) / truth.size, 4)
    squashed = []  # the old behaviour: one 2x2 block (256 px at 5 m) squashed into one 64 px tile
    for image, tiles in scenes:
        for r in range(0, tiles.shape[0], 2):
            for c in range(0, tiles.shape[1], 2):
                block = image[r * 64 : (r + 2) * 64, c * 64 : (c + 2) * 64]
                squashed.append(await _squashed(core, block) == tiles[r, c])
    report["accuracy"]["one_block_squashed_into_one_tile"] = round(float(np.mean(squashed)), 4)
    errors = []
    for image, tiles in scenes:
        result = await core.predict([_png(image)], 10, Pin())
        true = np.bincount(tiles.ravel(), minlength=len(CLASSES)) / tiles.size
        got = np.zeros(len(CLASSES))
        for _label, index, fraction in result.scenes[0].composition:
            got[index] = fraction
        errors.append(0.5 * np.abs(got - true).sum())
    report["composition_half_l1"] = {"mean": round(float(np.mean(errors)), 4), "max": round(float(np.max(errors)), 4)}
    report["cam_mass_inside"] = {}
    for method in cam.METHODS:
        inside = []
        for target in range(len(CLASSES)):
            blocks = np.array([[target, (target + 3) % 10], [(target + 5) % 10, (target + 7) % 10]])
            image, tiles = assemble(np.roll(blocks, target % 2, axis=0), seed=100 + target)
            result = await core.gradcam(_png(image), ClassChoice(index=target), CamOptions(method=method), Pin())
            heat = result.heatmap
            per_tile = heat.reshape(4, heat.shape[0] // 4, 4, heat.shape[1] // 4).sum(axis=(1, 3))
            inside.append(float(per_tile[tiles == target].sum() / max(per_tile.sum(), 1e-12)))
        report["cam_mass_inside"][method] = {"mean": round(float(np.mean(inside)), 4),
                                             "min": round(float(np.min(inside)), 4)}
    await core.backend.close()
    return report


async def _squashed(core, block: np.ndarray) -> int:
    from gateway.core import Pin
    from gateway.decoding import resize

    target, _ = core.router.route(Pin())
    tile = resize(block, core.backend.meta(target.model, target.version).input_size)[None]
    return int((await core._predict_batch(target, tile)).probabilities[0].argmax())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scene_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="eurosat")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scene_quality.json"))
    args = parser.parse_args(argv)
    report = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
              **asyncio.run(measure(args.models_dir, args.model))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
