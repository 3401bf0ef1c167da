"""`python -m bench`: the gateway against the naive Keras server and the raw signature, side by side, on this machine.

One server at a time (the machine's cores are shared by server and client), each warmed up before it is measured.
Writes a JSON report and prints a table; see bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import servers
from bench.client import (
    batch_totals,
    calls_for,
    closed_loop,
    cycle,
    mean_batch,
    run,
    sample_files,
    summarize,
    top1,
)
from bench.servers import gateway_settings, machine

TARGETS = {  # name: (figure, comparison, threshold, meaning)
    "predict_vs_naive": ("predict_throughput_vs_naive", ">=", 5.0, "gateway /predict req/s >= 5x the naive server"),
    "gateway_vs_raw": ("gateway_vs_raw_signature", ">=", 0.70,
                       "gateway images/s >= 70% of the raw signature at the gateway's mean batch size"),
    "gradcam_vs_predict": ("gradcam_vs_predict_p50", "<=", 1.5, "/gradcam median <= 1.5x /predict median"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument("--model", default="eurosat", help="model name (default: eurosat)")
    parser.add_argument("--out", type=Path, default=Path("bench/report.json"), help="JSON report path")
    parser.add_argument("--duration", type=float, default=15, help="seconds of each throughput measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the throughput runs")
    parser.add_argument("--sequential", type=int, default=200, help="requests per route at concurrency 1")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument("--no-scene", action="store_true",
                        help="skip the scene figures (/classmap and `python -m gateway scene` on 2048/8192 px rasters)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.sequential < 1:
        parser.error("--duration, --clients and --sequential must be positive")
    return args


def served_version(models_dir: Path, model: str) -> Path:
    """The version the gateway serves by default: the `stable` label in models.config, else the newest export."""
    from gateway.model_config import ConfigStore

    for config in ConfigStore(models_dir, "/models").read(model):
        if config.name == model and config.versions:
            version = config.labels.get("stable", max(config.versions))
            path = models_dir / model / str(version)
            if (path / "saved_model.pb").is_file():
                return path
            raise SystemExit(f"error: {path} has no saved_model.pb (export the model first: make train)")
    raise SystemExit(f"error: no version of {model!r} under {models_dir}")


def warmup_s(duration: float) -> float:
    return min(5.0, max(2.0, duration / 3))


def warm_up(url: str, calls, clients: int, duration: float) -> None:
    run(closed_loop(url, cycle(calls), clients, duration=warmup_s(duration)))


def concurrent(url: str, pid: int, calls, clients: int, duration: float) -> dict:
    """The measured run; the CPU both processes used tells how much of the machine the client took."""
    before = servers.cpu_seconds(pid)
    measured = run(closed_loop(url, cycle(calls), clients, duration=duration))
    figures = summarize(measured.results, measured.window)
    figures["clients"] = clients
    figures["server_cpu_cores"] = round((servers.cpu_seconds(pid) - before) / measured.elapsed, 2)
    figures["client_cpu_cores"] = round(measured.client_cpu_s / measured.elapsed, 2)
    return figures


def sequential(url: str, calls, count: int) -> dict:
    run(closed_loop(url, cycle(calls), 1, total=min(20, count)))
    measured = run(closed_loop(url, cycle(calls), 1, total=count))
    return summarize(measured.results, measured.window)


def measure_gateway(args: argparse.Namespace, files: list[Path]) -> dict:
    predict, gradcam = calls_for("/predict", files), calls_for("/gradcam", files)
    with servers.gateway(args.models_dir, args.model) as gw:
        warm_up(gw.url, predict, args.clients, args.duration)
        before = batch_totals(gw.url)
        loaded = concurrent(gw.url, gw.pid, predict, args.clients, args.duration)
        loaded["mean_batch_size"] = mean_batch(before, batch_totals(gw.url), "serving_default")
        return {
            "settings": gateway_settings(),
            "predict_concurrent": loaded,
            "predict_sequential": sequential(gw.url, predict, args.sequential),
            "gradcam_sequential": sequential(gw.url, gradcam, args.sequential),
            "top1": top1(gw.url, files),
            "rss_mib": round(servers.rss_bytes(gw.pid) / 2**20, 1),
        }


def measure_naive(args: argparse.Namespace, files: list[Path], version_dir: Path) -> dict:
    predict = calls_for("/predict", files)
    with servers.naive(version_dir) as naive:
        warm_up(naive.url, predict, args.clients, args.duration)
        return {
            "predict_concurrent": concurrent(naive.url, naive.pid, predict, args.clients, args.duration),
            "predict_sequential": sequential(naive.url, predict, max(20, args.sequential // 4)),
            "top1": top1(naive.url, files),
        }


def measure_raw(version_dir: Path, batch: int, seconds: float, calls: int) -> dict:
    """In this process, after both servers have stopped: the signature has the machine to itself."""
    from bench.raw import Signature

    signature = Signature(version_dir)
    return {"at_gateway_batch": signature.throughput(batch, seconds), "batch1": signature.latency(1, calls)}


def figures(gateway: dict, naive: dict, raw: dict) -> dict:
    gw_c, gw_p, gw_g = gateway["predict_concurrent"], gateway["predict_sequential"], gateway["gradcam_sequential"]
    return {
        "gateway_predict_rps": gw_c["throughput_rps"],
        "naive_predict_rps": naive["predict_concurrent"]["throughput_rps"],
        "predict_throughput_vs_naive": round(gw_c["throughput_rps"] / naive["predict_concurrent"]["throughput_rps"], 2),
        "gateway_mean_batch_size": gw_c["mean_batch_size"],
        "raw_images_per_s_at_that_batch": raw["at_gateway_batch"]["images_per_s"],
        "gateway_vs_raw_signature": round(gw_c["throughput_rps"] / raw["at_gateway_batch"]["images_per_s"], 3),
        "predict_p50_ms_c1": gw_p["p50_ms"],
        "gradcam_p50_ms_c1": gw_g["p50_ms"],
        "gradcam_vs_predict_p50": round(gw_g["p50_ms"] / gw_p["p50_ms"], 3),
        "raw_batch1_p50_ms": raw["batch1"]["p50_ms"],
        "gateway_overhead_ms_c1": round(gw_p["p50_ms"] - raw["batch1"]["p50_ms"], 3),
        "top1_agreement_gateway_naive": round(
            sum(a == b for a, b in zip(gateway["top1"], naive["top1"], strict=True)) / len(gateway["top1"]), 3),
    }


def judge(values: dict) -> dict:
    out = {}
    for name, (figure, op, threshold, meaning) in TARGETS.items():
        value = values[figure]
        out[name] = {"figure": figure, "value": value, "target": f"{op} {threshold}", "meaning": meaning,
                     "pass": value >= threshold if op == ">=" else value <= threshold}
    return out


def table(report: dict) -> str:
    g, n, f = report["gateway"], report["naive"], report["figures"]
    rows = [
        ("", "req/s", "p50 ms", "p99 ms", "c=1 p50 ms"),
        (f"gateway /predict (c={g['predict_concurrent']['clients']})", g["predict_concurrent"]["throughput_rps"],
         g["predict_concurrent"].get("p50_ms"), g["predict_concurrent"].get("p99_ms"), f["predict_p50_ms_c1"]),
        (f"naive /predict (c={n['predict_concurrent']['clients']})", n["predict_concurrent"]["throughput_rps"],
         n["predict_concurrent"].get("p50_ms"), n["predict_concurrent"].get("p99_ms"),
         n["predict_sequential"].get("p50_ms")),
        ("gateway /gradcam (c=1)", "", "", "", f["gradcam_p50_ms_c1"]),
        (f"raw signature (batch {report['raw']['at_gateway_batch']['batch_size']}, img/s)",
         f["raw_images_per_s_at_that_batch"], "", "", f"{f['raw_batch1_p50_ms']} (batch 1)"),
    ]
    lines = [f"{r[0]!s:<34}" + "".join(f"{r_!s:>14}" for r_ in r[1:]) for r in rows]
    lines.append(f"gateway overhead at c=1: {f['gateway_overhead_ms_c1']} ms; mean batch "
                 f"{f['gateway_mean_batch_size']}; top-1 agreement with naive {f['top1_agreement_gateway_naive']}")
    for name, t in report["targets"].items():
        lines.append(f"{'PASS' if t['pass'] else 'FAIL'}  {name:<20} {t['value']:>8} {t['target']:<7} {t['meaning']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    version_dir = served_version(args.models_dir, args.model)
    files = sample_files()
    started = time.monotonic()
    report: dict = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                    "config": {"models_dir": str(args.models_dir), "model": args.model, "version": version_dir.name,
                               "backend": "local", "duration_s": args.duration, "clients": args.clients,
                               "sequential_requests": args.sequential, "samples": [f.name for f in files]}}
    print(f"gateway: {args.clients} clients for {args.duration:g} s, then {args.sequential} sequential per route",
          file=sys.stderr)
    report["gateway"] = measure_gateway(args, files)
    print("naive server ...", file=sys.stderr)
    report["naive"] = measure_naive(args, files, version_dir)
    batch = max(1, round(report["gateway"]["predict_concurrent"]["mean_batch_size"] or 1))
    print(f"raw signature at batch {batch} ...", file=sys.stderr)
    report["raw"] = measure_raw(version_dir, batch, min(args.duration, 10), args.sequential)
    report["figures"] = figures(report["gateway"], report["naive"], report["raw"])
    report["targets"] = judge(report["figures"])
    if (args.models_dir / args.model / "2").is_dir():  # issue 16's latency bound, against the pre-TTA version
        from bench import versions

        report["versions"] = versions.measure(args.models_dir, args.model, version_dir, 2)
        report["targets"] |= report["versions"].pop("targets")
    if not args.no_scene:
        from bench import scene

        report["scene"] = scene.measure(args.models_dir, args.model, version_dir, args.duration)
        report["targets"] |= report["scene"].pop("targets")
    report["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"report: {args.out}", file=sys.stderr)
    return 1 if args.check and not all(t["pass"] for t in report["targets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
