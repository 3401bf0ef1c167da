"""Which CAM method is faithful, and does it beat trivial maps? Deletion / insertion on test tiles, localization on
scenes assembled from test tiles; every CAM method in gateway.cam next to three baselines (random, uniform, centred
Gaussian) scored the same way.

`python -m bench.faithfulness [--version 1] [--limit 200] [--scenes 100]`:
- deletion / insertion AUC (blur baseline, `gateway.faithfulness`) on `--limit` test-split tiles, explaining the
  predicted class;
- localization on `--scenes` scenes of 4x4 test tiles (256 px) where one class fills a 2x2 block and no other tile
  has it, explaining that class: share of the stitched map's mass inside the block and the pointing game. Twice:
  "aligned" (each model tile is one mosaic tile) and "shifted" (the mosaic is offset by half a tile, so every model
  tile straddles four and only detail inside a tile can find the block). A map that knows nothing scores 0.25.
Writes bench/results/faithfulness.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BASELINES = ("baseline: random", "baseline: uniform", "baseline: centred gaussian")
# metric: True where higher is better
METRICS = {"deletion_auc": False, "insertion_auc": True, "mass_aligned": True, "pointing_aligned": True,
           "mass_shifted": True, "pointing_shifted": True}
MAP_SIDE = 16  # baselines at the finest CAM resolution


def test_split(version_dir: Path, data: str | None):
    """The exact test split the model was evaluated on (same data, seed and fractions as its training run), decoded
    the way training decodes, with its labels."""
    from exporter.config import TrainConfig
    from exporter.dataset import decode_all, load_dataset
    from exporter.train import split_dataset

    meta = json.loads((version_dir / "assets" / "metadata.json").read_text())
    config = meta["training"]["config"]
    cfg = TrainConfig.from_json(config, data=data or config["data"])
    test = split_dataset(load_dataset(cfg.data), cfg)["test"]
    return decode_all(test, cfg.input_size), test.labels


def baseline_maps(rng: np.random.Generator) -> dict[str, Callable[[], np.ndarray]]:
    from gateway.faithfulness import center_gaussian_map, random_map, uniform_map

    side = (MAP_SIDE, MAP_SIDE)
    return {BASELINES[0]: lambda: random_map(side, rng), BASELINES[1]: lambda: uniform_map(side),
            BASELINES[2]: lambda: center_gaussian_map(side)}


def deletion_insertion_scores(explain, predict, images: np.ndarray, steps: int) -> dict[str, dict[str, list]]:
    from gateway import cam
    from gateway.faithfulness import deletion_insertion

    out = explain(images, np.full(len(images), -1, np.int32))
    baselines = baseline_maps(np.random.default_rng(0))
    scores: dict[str, dict[str, list]] = {}
    for i in range(len(images)):
        stages = [(a[i], g[i]) for a, g in out.stages]
        maps = {name: cam.compute_cam(name, stages) for name in cam.METHODS} | {k: f() for k, f in baselines.items()}
        for name, cam_map in maps.items():
            d, ins = deletion_insertion(predict, images[i], cam_map, int(out.class_index[i]), steps=steps)
            row = scores.setdefault(name, {"deletion_auc": [], "insertion_auc": []})
            row["deletion_auc"].append(d)
            row["insertion_auc"].append(ins)
    return scores


def localization_scores(explain, tiles: np.ndarray, labels: np.ndarray, count: int, shifted: bool,
                        seed: int) -> dict[str, dict[str, list]]:
    from gateway import cam, scene
    from gateway.faithfulness import assemble, mass_inside, pointing_hit, scene_layout, stitch, tile_map

    rng = np.random.default_rng(seed)
    size = tiles.shape[1:3]
    grid = scene.Grid((4 * size[0], 4 * size[1]), size)
    baselines = baseline_maps(np.random.default_rng(seed + 1))
    key = "shifted" if shifted else "aligned"
    scores: dict[str, dict[str, list]] = {}
    for _ in range(count):
        indices, target, corner = scene_layout(labels, rng, shifted=shifted)
        image, mask = assemble(tiles, indices, corner, shifted=shifted)
        out = explain(grid.tiles(image), np.full(len(grid), target, np.int32))
        p = out.probabilities[:, target]
        per_tile = [[(a[i], g[i]) for a, g in out.stages] for i in range(len(grid))]
        maps = {name: stitch(grid, [scene.tile_heatmap(name, s, float(p[i])) for i, s in enumerate(per_tile)])
                for name in cam.METHODS}
        maps |= {name: stitch(grid, [tile_map(make(), float(p[i])) for i in range(len(grid))])
                 for name, make in baselines.items()}
        for name, scene_map in maps.items():
            row = scores.setdefault(name, {f"mass_{key}": [], f"pointing_{key}": []})
            row[f"mass_{key}"].append(mass_inside(scene_map, mask))
            row[f"pointing_{key}"].append(pointing_hit(scene_map, mask))
    return scores


def summarise(scores: dict[str, dict[str, list]]) -> dict:
    """Mean and standard error per method and metric; for each method, the metrics on which it beats every baseline
    by more than two standard errors of the paired difference (same tiles / scenes) to the best baseline."""
    table: dict[str, dict] = {}
    for name, row in scores.items():
        table[name] = {}
        for metric, values in row.items():
            v = np.asarray(values, np.float64)
            table[name][metric] = round(float(v.mean()), 4)
            table[name][f"{metric}_se"] = round(float(v.std(ddof=1) / np.sqrt(len(v))), 4)
    for name in scores:
        if name in BASELINES:
            continue
        beats = []
        for metric, higher in METRICS.items():
            sign = 1.0 if higher else -1.0
            best = max(BASELINES, key=lambda b, m=metric, s=sign: s * table[b][m])
            diff = sign * (np.asarray(scores[name][metric]) - np.asarray(scores[best][metric]))
            if diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff)):
                beats.append(metric)
        table[name]["beats_every_baseline_on"] = beats
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faithfulness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--model", default="eurosat")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--limit", type=int, default=200, help="test tiles for deletion / insertion")
    parser.add_argument("--scenes", type=int, default=100, help="scenes per localization variant")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--data", default=None, help="dataset path (default: the one the model trained on)")
    parser.add_argument("--out", default="bench/results/faithfulness.json")
    args = parser.parse_args(argv)
    if args.limit < 2 or args.scenes < 2 or args.steps < 1:
        parser.error("--limit and --scenes must be at least 2 (a standard error needs two), --steps at least 1")

    import tensorflow as tf

    from gateway.backends.base import explanation_from

    version_dir = Path(args.models_dir) / args.model / str(args.version)
    if not version_dir.is_dir():
        parser.error(f"no model version at {version_dir}")
    model = tf.saved_model.load(str(version_dir))

    def predict(batch: np.ndarray) -> np.ndarray:
        return model.signatures["serving_default"](images=tf.constant(batch))["probabilities"].numpy()

    def explain(images: np.ndarray, class_index: np.ndarray):
        out = model.signatures["gradcam_multilayer"](images=tf.constant(images), class_index=tf.constant(class_index))
        return explanation_from(args.version, {k: v.numpy() for k, v in out.items()})

    started = time.perf_counter()
    tiles, labels = test_split(version_dir, args.data)
    pick = np.sort(np.random.default_rng(0).permutation(len(tiles))[: args.limit])
    scores = deletion_insertion_scores(explain, predict, tiles[pick], args.steps)
    for shifted in (False, True):
        for name, row in localization_scores(explain, tiles, labels, args.scenes, shifted, seed=1).items():
            scores[name].update(row)
    table = summarise(scores)
    top1 = float((predict(tiles[pick]).argmax(axis=1) == labels[pick]).mean())
    report = {
        "model": args.model, "version": args.version, "tiles": len(pick), "scenes_per_variant": args.scenes,
        "steps": args.steps, "top1_accuracy_on_these_tiles": round(top1, 4),
        "seconds": round(time.perf_counter() - started, 1), "load_average_at_end": os.getloadavg()[0],
        "methods": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(table))
    print(f"{len(pick)} tiles, {args.scenes} scenes per variant, {args.steps} steps, {report['seconds']} s; "
          f"wrote {args.out}")
    return 0


def markdown(table: dict) -> str:
    head = ("| map | deletion AUC (lower) | insertion AUC (higher) | mass in block, aligned | pointing, aligned "
            "| mass in block, shifted | pointing, shifted |\n|---|---|---|---|---|---|---|")
    rows = []
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["mass_shifted"]):
        cells = []
        for metric in METRICS:
            bold = metric in row.get("beats_every_baseline_on", [])
            value = f"{row[metric]:.3f} ± {row[metric + '_se']:.3f}"
            cells.append(f"**{value}**" if bold else value)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


if __name__ == "__main__":
    raise SystemExit(main())
