"""`python -m bench.scene`: scene throughput against the raw signature, measured in one run on this machine.

- raw: `serving_default` in-process at batch 256 (the ceiling, tiles/s);
- `/classmap`: a 1024 x 1024 px PNG scene (256 tiles at 10 m) posted back to back by 2 clients to the gateway;
- `/gradcam` of a 1024 x 1024 px scene, tiled and `seamless` (one request at a time): how much longer blending
  half-overlapping windows takes, against how much more admission charges for it;
- `python -m gateway scene`: start to finish (process start, model load, reading, writing) on a 2048 x 2048 and an
  8192 x 8192 GeoTIFF assembled from EuroSAT test tiles, with its peak memory (VmHWM) and per-tile accuracy.
One thing runs at a time: server, command and signature each have the machine to themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench import servers
from bench.client import Call, closed_loop, run, summarize

ROOT = Path(__file__).resolve().parent.parent
KM2_PER_TILE = 0.64 * 0.64  # a 64 px tile at 10 m
TARGETS = {
    "classmap_vs_raw": (">=", 0.70, "/classmap tiles/s >= 0.7x the raw signature (batch 256)"),
    "command_8192_vs_raw": (">=", 0.70, "scene command tiles/s, start to finish on 8192 px, >= 0.7x raw"),
    "command_memory_growth_mib": ("<=", 150, "peak memory at 8192 px minus at 2048 px, MiB"),
    "command_8192_accuracy": (">=", 0.95, "per-tile accuracy of the 8192 px class map"),
    "seamless_time_over_price": ("<=", 1.0, "seamless/tiled scene /gradcam time <= the cost ratio admission charges"),
}


def raster(path: Path, side: int, seed: int) -> np.ndarray:
    """Write a `side` px GeoTIFF (10 m, UTM 33N) of 2x2 same-class test-tile blocks, one block row at a time (flat
    memory); returns the true class per tile."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    sys.path.insert(0, str(ROOT))
    from tests.scenes import ORIGIN, UTM_33N, assemble, random_blocks

    blocks = side // 128
    truth = np.zeros((side // 64, side // 64), int)
    profile = {"driver": "GTiff", "height": side, "width": side, "count": 3, "dtype": "uint8", "crs": UTM_33N,
               "transform": Affine.translation(*ORIGIN) @ Affine.scale(10, -10), "tiled": True, "blockxsize": 256,
               "blockysize": 256}
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(blocks):
            image, row_truth = assemble(random_blocks(1, blocks, seed + row), seed + row)
            ds.write(np.moveaxis(image, -1, 0), window=Window(0, row * 128, side, 128))
            truth[2 * row : 2 * row + 2] = row_truth
    return truth


def peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    """Poll VmHWM (the kernel's own peak resident size) until the process ends."""
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)


def command(models_dir: Path, model: str, side: int, workdir: Path) -> dict:
    """The scene command on a `side` px raster, start to finish, as a user runs it."""
    from tests.scenes import per_tile_accuracy

    source, out = workdir / f"in-{side}.tif", workdir / f"out-{side}.tif"
    truth = raster(source, side, seed=side)
    env = {**os.environ, "GATEWAY_MODELS_DIR": str(models_dir.resolve()), "GATEWAY_MODEL_NAME": model}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "gateway", "scene", str(source), str(out), "--overwrite"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=peak_rss, args=(process.pid, stop, samples), daemon=True)
    watcher.start()
    stdout, _ = process.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"the scene command failed on {side} px: {stdout}")
    import rasterio

    with rasterio.open(out) as ds:
        accuracy = per_tile_accuracy(ds.read(1), truth)
    inner = json.loads(out.with_suffix(".json").read_text())
    return {"side_px": side, "tiles": truth.size, "wall_s": round(seconds, 2),
            "tiles_per_s": round(truth.size / seconds, 1), "km2_per_s": round(truth.size * KM2_PER_TILE / seconds, 2),
            "inference_loop_s": inner["seconds"], "inference_loop_tiles_per_s": inner["tiles_per_s"],
            "peak_rss_mib": round(max(samples, default=0) / 2**20, 1), "per_tile_accuracy": round(accuracy, 4)}


def classmap_route(models_dir: Path, model: str, seconds: float, clients: int = 2) -> dict:
    """Back-to-back POST /classmap of a 1024 px scene (256 tiles) by `clients` clients."""
    import cv2
    import httpx

    from tests.scenes import assemble, random_blocks

    image, _ = assemble(random_blocks(8, 8, seed=11), seed=11)
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    request = httpx.Request("POST", "http://x/classmap", files={"image": ("scene.png", png, "image/png")})
    call = Call("/classmap", request.read(), request.headers["content-type"])  # answered with the default PNG map
    with servers.gateway(models_dir, model, {"GATEWAY_WORKERS": "1"}) as gw:
        run(closed_loop(gw.url, lambda _: call, clients, min(seconds, 5)))  # warm-up
        measured = run(closed_loop(gw.url, lambda _: call, clients, seconds))
    summary = summarize(measured.results, measured.window)
    tiles_per_s = summary["throughput_rps"] * 256
    return {"scene_px": 1024, "tiles_per_request": 256, "clients": clients, **summary,
            "tiles_per_s": round(tiles_per_s, 1), "km2_per_s": round(tiles_per_s * KM2_PER_TILE, 2)}


def gradcam_seamless(models_dir: Path, model: str, version_dir: Path, requests: int = 5) -> dict:
    """Seconds per scene `/gradcam` (256 tiles, 1,089 windows when seamless), sequential, after one warm-up each."""
    import cv2
    import httpx

    from gateway import admission, scene
    from gateway.decoding import probe
    from tests.scenes import assemble, random_blocks

    image, _ = assemble(random_blocks(8, 8, seed=12), seed=12)
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    seconds = {}
    # a long deadline: this measures time, and admission would refuse a large request while the load average still
    # remembers the previous measurement
    with servers.gateway(models_dir, model, {"GATEWAY_WORKERS": "1", "GATEWAY_REQUEST_TIMEOUT_S": "120"}) as gw:
        for mode in ("false", "true", "false", "true"):  # interleaved, so a slow spell of the host hits both
            times = []
            for _ in range(requests + 1):
                started = time.perf_counter()
                r = httpx.post(f"{gw.url}/gradcam", params={"seamless": mode}, timeout=120,
                               files={"image": ("scene.png", png, "image/png")})
                r.raise_for_status()
                times.append(time.perf_counter() - started)
            seconds.setdefault(mode, []).extend(times[1:])
    header = probe(png, 10**9)
    windows = len(scene.BlendGrid(image.shape[:2], (64, 64)))
    weight = admission.tile_weight(json.loads((version_dir / "assets" / "metadata.json").read_text())["multiply_adds"])
    tiled_cost, seamless_cost = (admission.request_cost([header], "gradcam", weight * n) for n in (256, 256 + windows))
    price = seamless_cost / tiled_cost
    tiled, seamless = (float(np.median(seconds[m])) for m in ("false", "true"))
    return {"scene_px": 1024, "tiles": 256, "windows": windows, "tiled_s": round(tiled, 3),
            "seamless_s": round(seamless, 3), "time_ratio": round(seamless / tiled, 3), "price_ratio": round(price, 3)}


def judge(figures: dict) -> dict:
    out = {}
    for name, (op, threshold, meaning) in TARGETS.items():
        value = figures[name]
        out[name] = {"value": value, "target": f"{op} {threshold}", "meaning": meaning,
                     "pass": value >= threshold if op == ">=" else value <= threshold}
    return out


def measure(models_dir: Path, model: str, version_dir: Path, seconds: float) -> dict:
    from bench.raw import Signature

    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        print("scene command on 2048 and 8192 px rasters ...", file=sys.stderr)
        report["command"] = [command(models_dir, model, side, Path(tmp)) for side in (2048, 8192)]
    print("/classmap ...", file=sys.stderr)
    report["classmap"] = classmap_route(models_dir, model, seconds)
    print("/gradcam of a scene, tiled and seamless ...", file=sys.stderr)
    report["gradcam_seamless"] = gradcam_seamless(models_dir, model, version_dir)
    print("raw signature at batch 256 ...", file=sys.stderr)
    report["raw"] = Signature(version_dir).throughput(256, min(seconds, 15))
    raw = report["raw"]["images_per_s"]
    small, large = report["command"]
    report["figures"] = {
        "raw_tiles_per_s": raw,
        "classmap_tiles_per_s": report["classmap"]["tiles_per_s"],
        "classmap_vs_raw": round(report["classmap"]["tiles_per_s"] / raw, 3),
        "command_2048_vs_raw": round(small["tiles_per_s"] / raw, 3),
        "command_8192_vs_raw": round(large["tiles_per_s"] / raw, 3),
        "command_memory_growth_mib": round(large["peak_rss_mib"] - small["peak_rss_mib"], 1),
        "command_8192_accuracy": large["per_tile_accuracy"],
        "seamless_time_over_price": round(report["gradcam_seamless"]["time_ratio"]
                                          / report["gradcam_seamless"]["price_ratio"], 3),
    }
    report["targets"] = judge(report["figures"])
    return report


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import served_version

    parser = argparse.ArgumentParser(prog="python -m bench.scene", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="eurosat")
    parser.add_argument("--seconds", type=float, default=20, help="length of the /classmap and raw measurements")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scene.json"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": servers.machine(),
              **measure(args.models_dir, args.model, served_version(args.models_dir, args.model), args.seconds)}
    report["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, t in report["targets"].items():
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {name:<28} {t['value']:>8} {t['target']:<7} {t['meaning']}")
    print(f"report: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
