"""Which CAM method is most faithful? Deletion / insertion AUC (Petsiuk et al. 2018) on the model's test split.

`python -m bench.faithfulness [--version 1] [--limit 300]`: for each test image, every CAM method in gateway.cam
(plus a random map and a centred Gaussian as sanity baselines) explains the predicted class; deletion AUC (lower is
better) and insertion AUC (higher is better) are averaged. Writes bench/faithfulness.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def test_split_images(version_dir: Path, limit: int, data: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The exact test split the model was evaluated on (same data, seed and fractions as its training run)."""
    from exporter.dataset import load_dataset
    from exporter.pipeline import decode_all
    from exporter.train import TrainConfig, split_dataset

    meta = json.loads((version_dir / "assets" / "metadata.json").read_text())
    config = meta["training"]["config"]
    cfg = TrainConfig.from_json(config, data=data or config["data"])
    test = split_dataset(load_dataset(cfg.data), cfg)["test"]
    pick = np.random.default_rng(0).permutation(len(test))[:limit]
    subset = test.subset(np.sort(pick))
    return decode_all(subset, cfg.input_size), subset.labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faithfulness", description=__doc__)
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--model", default="eurosat")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--limit", type=int, default=300, help="test images to score")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--data", default=None, help="dataset path (default: the one the model trained on)")
    parser.add_argument("--out", default="bench/faithfulness.json")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from gateway import cam
    from gateway.backends.base import explanation_from
    from gateway.faithfulness import center_gaussian_map, deletion_insertion, random_map

    version_dir = Path(args.models_dir) / args.model / str(args.version)
    model = tf.saved_model.load(str(version_dir))
    images, labels = test_split_images(version_dir, args.limit, args.data)

    def predict(batch: np.ndarray) -> np.ndarray:
        return model.signatures["serving_default"](images=tf.constant(batch))["probabilities"].numpy()

    started = time.perf_counter()
    explained = model.signatures["gradcam_multilayer"](images=tf.constant(images),
                                            class_index=tf.constant(np.full(len(images), -1, np.int32)))
    out = explanation_from(args.version, {k: v.numpy() for k, v in explained.items()})
    stages = out.stages
    rng = np.random.default_rng(0)
    methods = {name: (lambda i, n=name: cam.compute_cam(n, [(a[i], g[i]) for a, g in stages])) for name in cam.METHODS}
    methods["baseline: random"] = lambda i: random_map((16, 16), rng)
    methods["baseline: centred gaussian"] = lambda i: center_gaussian_map((16, 16))
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for i in range(len(images)):
        for name, make in methods.items():
            scores[name].append(deletion_insertion(predict, images[i], make(i), int(out.class_index[i]),
                                                   steps=args.steps))
    table = {name: {"deletion_auc": round(float(np.mean([s[0] for s in v])), 4),
                    "insertion_auc": round(float(np.mean([s[1] for s in v])), 4)} for name, v in scores.items()}
    report = {
        "model": args.model, "version": args.version, "images": len(images), "steps": args.steps,
        "top1_accuracy_on_these_images": round(float((out.class_index == labels).mean()), 4),
        "seconds": round(time.perf_counter() - started, 1), "methods": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("| method | deletion AUC (lower is better) | insertion AUC (higher is better) |\n|---|---|---|")
    for name, row in sorted(table.items(), key=lambda kv: kv[1]["deletion_auc"]):
        print(f"| {name} | {row['deletion_auc']:.4f} | {row['insertion_auc']:.4f} |")
    print(f"{len(images)} test images, {args.steps} steps, {report['seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
