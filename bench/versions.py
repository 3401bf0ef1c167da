"""What a model change costs: the served version's `serving_default` against a baseline version, in-process.

Batch 1 (one request, the latency a caller feels) and batch 256 (what scenes use), one version at a time, the same
real tiles. Issue 16's bound: the served version's batch-1 median at most 2x the baseline's (version 2, the model
before test-time augmentation).

    python -m bench.versions [--models-dir models] [--model eurosat] [--baseline 2] [--out bench/results/versions.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.raw import Signature

BATCH1_LIMIT = 2.0


def _version(version_dir: Path, calls: int, seconds: float) -> dict:
    meta = json.loads((version_dir / "assets" / "metadata.json").read_text())
    signature = Signature(version_dir)
    return {"version": int(version_dir.name), "tta_views": meta.get("tta") or 1,
            "batch1": signature.latency(1, calls), "batch256": signature.throughput(256, seconds)}


def measure(models_dir: Path, model: str, served: Path, baseline: int, calls: int = 200, seconds: float = 8) -> dict:
    """Figures for the served version and the baseline, and the batch-1 target."""
    base_dir = Path(models_dir) / model / str(baseline)
    rows = [_version(served, calls, seconds)]
    if base_dir.resolve() != served.resolve():
        rows.append(_version(base_dir, calls, seconds))
    ratio = round(rows[0]["batch1"]["p50_ms"] / rows[-1]["batch1"]["p50_ms"], 3)
    return {"versions": rows, "targets": {"batch1_vs_baseline": {
        "figure": "served_batch1_p50_vs_baseline", "value": ratio, "target": f"<= {BATCH1_LIMIT}",
        "meaning": f"serving_default batch-1 median <= {BATCH1_LIMIT}x version {baseline}'s",
        "pass": ratio <= BATCH1_LIMIT}}}


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import served_version

    parser = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="eurosat")
    parser.add_argument("--baseline", type=int, default=2, help="the version to compare with (default 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/versions.json"))
    args = parser.parse_args(argv)
    if not (args.models_dir / args.model / str(args.baseline) / "saved_model.pb").is_file():
        parser.error(f"no version {args.baseline} of {args.model} in {args.models_dir}")
    report = measure(args.models_dir, args.model, served_version(args.models_dir, args.model), args.baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for row in report["versions"]:
        print(f"version {row['version']} ({row['tta_views']} view(s)): batch 1 p50 {row['batch1']['p50_ms']} ms, "
              f"batch 256 {row['batch256']['images_per_s']} images/s")
    target = report["targets"]["batch1_vs_baseline"]
    print(f"{'PASS' if target['pass'] else 'FAIL'}  {target['value']} {target['target']}  {target['meaning']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
