"""`python -m gateway scene IN.tif OUT.tif`: land cover for a raster of any size, streamed through the model.

The raster is read one row of tiles at a time (GDAL's block cache bounded), resampled to the model's ground resolution
and cut into tiles by the same scene module as `POST /classmap`, batched through the configured backend (`local`
in-process, or `tfserving` with several requests in flight so that a fleet behind one Service shares the work), and
written as a Cloud-Optimized GeoTIFF class map: band 1 the class index, band 2 the confidence, in the input's CRS, one
cell per pixel. Output is written beside OUT and renamed at the end: an interrupted run leaves nothing at OUT.
Backend settings come from the same GATEWAY_* environment variables as the server (`python -m gateway --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway import cam, geotiff, scene
from gateway.backends.base import GRADCAM, GRADCAM_MULTILAYER, Backend, Target, VersionMeta
from gateway.errors import BackendUnavailable, DeadlineExceeded, GatewayError

BACKOFF_S = 1.0  # the first retry's delay; each next one doubles


class SceneError(Exception):
    """A problem the user must fix: printed as one line, exit status 2."""


@dataclass
class Job:
    path: Path
    out: Path
    meta: VersionMeta
    target: Target
    grid: scene.Grid
    factors: tuple[float, float]
    gsd: tuple[float, float]
    geo: geotiff.GeoInfo
    source_shape: tuple[int, int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway scene", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="a GeoTIFF (or any raster GDAL reads): 1, 3 or 4 bands, uint8/uint16")
    parser.add_argument("output", type=Path, help="the class map to write (a Cloud-Optimized GeoTIFF)")
    parser.add_argument("--gsd-m", type=float, default=None,
                        help="metres per pixel of the input; required when it has no georeferencing")
    parser.add_argument("--model", default=None, help="model name (default: GATEWAY_MODEL_NAME)")
    parser.add_argument("--version", type=int, default=None,
                        help="a served model version (default: the one labelled stable)")
    parser.add_argument("--probabilities", action="store_true", help="add one band per class probability")
    parser.add_argument("--explain", metavar="CLASS", default=None,
                        help="also write OUT's stem + .heatmap.tif: that class's scene heat map (a label or an index)")
    parser.add_argument("--method", default="gradcam", help="CAM method for --explain (default %(default)s)")
    parser.add_argument("--seamless", action="store_true",
                        help="with --explain: blend windows every half tile, so the heat map has no dim grid at tile "
                        "borders (classifies, then explains about 4x the tiles)")
    parser.add_argument("--batch", type=int, default=256, help="tiles per backend call (default %(default)s)")
    parser.add_argument("--inflight", type=int, default=None,
                        help="backend calls in flight (default: 2 local, 8 tfserving)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries of a batch while the backend is unavailable, with backoff 1, 2, 4, ... s; then "
                        "the run stops, saying which tiles it reached (default %(default)s)")
    return parser


def _open_source(path: Path):
    if not path.is_file():
        raise SceneError(f"{path} does not exist or is not a file")
    try:
        return geotiff.open_dataset(str(path))
    except GatewayError as exc:
        raise SceneError(f"{path}: {exc.message}") from None


def plan(args, meta: VersionMeta, target: Target) -> Job:
    """Check everything before the first tile: the output, the raster's layout, its ground resolution, the model."""
    if args.output.exists() and not args.overwrite:
        raise SceneError(f"{args.output} exists: pass --overwrite to replace it")
    if not args.output.parent.is_dir():
        raise SceneError(f"the folder of {args.output} does not exist")
    if args.method not in cam.METHODS:
        raise SceneError(f"--method {args.method[:40]!r} is not a CAM method: use one of {', '.join(cam.METHODS)}")
    if not meta.is_tile:
        raise SceneError(f"{target.model} version {target.version} is an image model (no ground resolution in its "
                         "card): the scene command needs a tile model (exported with --gsd-m)")
    if args.seamless and args.explain is None:
        raise SceneError("--seamless shapes the heat map: pass --explain CLASS with it")
    if args.batch < 1 or (args.inflight is not None and args.inflight < 1) or args.retries < 0:
        raise SceneError("--batch and --inflight must be at least 1, --retries at least 0")
    with _open_source(args.input) as ds:
        try:
            geotiff.check_layout(ds)
        except GatewayError as exc:
            raise SceneError(f"{args.input}: {exc.message}") from None
        geo = geotiff.GeoInfo(ds.crs, ds.transform)
        shape = (ds.height, ds.width)
    own = geo.gsd_m(shape)
    if args.gsd_m is not None and not args.gsd_m > 0:
        raise SceneError(f"--gsd-m must be a positive number of metres per pixel, got {args.gsd_m}")
    gsd = (args.gsd_m, args.gsd_m) if args.gsd_m else own
    if gsd is None:
        raise SceneError(f"{args.input} has no georeferencing (no CRS): pass --gsd-m with its metres per pixel")
    factors = scene.scale_factors(gsd, meta.gsd_m)
    grid = scene.Grid(scene.resampled_size(shape, factors), meta.input_size)
    return Job(args.input, args.output, meta, target, grid, factors, gsd, geo, shape)


def read_rows(job: Job, grid: scene.Grid | scene.BlendGrid) -> Iterator[tuple[int, np.ndarray]]:
    """(row, its tiles) of `grid` (the cells' or a seamless heat map's windows), reading only the source rows each
    needs: memory stays flat whatever the raster's size."""
    from rasterio.windows import Window

    fy = job.factors[0]
    with _open_source(job.path) as ds:
        for row in range(grid.rows):
            y0, y1 = grid.strip(row)
            top = min(job.source_shape[0] - 1, math.floor(y0 / fy))
            bottom = min(job.source_shape[0], max(top + 1, math.ceil(y1 / fy)))
            bands = ds.read(window=Window(0, top, job.source_shape[1], bottom - top))
            strip = scene.resample(geotiff.to_rgb8(bands), (y1 - y0, job.grid.size[1]))
            yield row, grid.row_tiles(strip, row)


async def with_retries(call, describe: str, retries: int):
    """A batch that fails because the backend is away is retried with backoff, then the run stops, saying where."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except (BackendUnavailable, DeadlineExceeded) as exc:
            if attempt == retries:
                raise BackendUnavailable(f"the backend stayed unavailable after {retries} retries ({exc.message}); "
                                         f"stopped at {describe}; nothing was written") from None
            delay = BACKOFF_S * 2**attempt
            print(f"backend unavailable ({exc.message}); retry {attempt + 1}/{retries} in {delay:g} s",
                  file=sys.stderr)
            await asyncio.sleep(delay)


async def run(job: Job, backend: Backend, args) -> dict:
    """Stream every row of tiles through the backend; returns the summary written beside the output. With --explain
    each tile's explanation also gives its probabilities; --seamless explains its own windows after classifying."""
    from tqdm import tqdm

    grid, meta = job.grid, job.meta
    probabilities = np.zeros((grid.rows, grid.cols, len(meta.class_names)), np.float32)
    explain = _class_index(args.explain, meta.class_names) if args.explain is not None else None
    blend = scene.BlendGrid(grid.size, grid.tile) if args.seamless else None
    canvas = None
    inflight = asyncio.Semaphore(args.inflight or (8 if not backend.applies_config_locally else 2))
    timeout = 600.0
    signature = GRADCAM_MULTILAYER if args.method in cam.MULTI_LAYER else GRADCAM

    def predict(tiles: np.ndarray):
        return backend.predict(tiles, job.target, timeout)

    def explain_tiles(tiles: np.ndarray):
        return backend.explain(tiles, np.full(len(tiles), explain, np.int32), job.target, timeout, signature)

    def canvas_for(size: tuple[int, int]):
        if blend is None:
            return scene.HeatmapCanvas(grid, size)
        try:
            return scene.BlendCanvas(blend, size)
        except ValueError as exc:  # a CAM grid a seamless map cannot halve
            raise SceneError(str(exc)) from None

    def paint(cells: np.ndarray, result, cols: int) -> None:
        nonlocal canvas
        canvas = scene.paint_tiles(canvas, canvas_for, [(int(c // cols), int(c % cols)) for c in cells],
                                   result.stages, result.probabilities[:, explain], args.method)

    def classified(cells: np.ndarray, result) -> None:
        probabilities[cells // grid.cols, cells % grid.cols] = result.probabilities
        if explain is not None and blend is None:
            paint(cells, result, grid.cols)

    started = time.perf_counter()
    progress = tqdm(total=len(grid) + (len(blend) if blend else 0), unit="tile", desc=job.path.name,
                    file=sys.stderr, smoothing=0.1)
    try:
        await stream(job, grid, "grid row", predict if explain is None or blend else explain_tiles, classified,
                     inflight, args, progress)
        if blend:
            await stream(job, blend, "heat-map window row", explain_tiles,
                         lambda cells, r: paint(cells, r, blend.cols), inflight, args, progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    write_outputs(job, args, probabilities, canvas, explain)
    return summary(job, probabilities, seconds)


async def stream(job: Job, grid: scene.Grid | scene.BlendGrid, what: str, call, consume, inflight: asyncio.Semaphore,
                 args, progress) -> None:
    """Batches of `args.batch` tiles of `grid`, read row by row, through `call` (retried while the backend is away),
    several in flight, `consume(cells, result)` as each returns; GDAL reads overlap the model's work, read-ahead is
    bounded."""

    async def infer(first: int, tiles: np.ndarray) -> None:
        where = f"tiles {first}-{first + len(tiles) - 1} of {len(grid)} ({what} {first // grid.cols})"
        async with inflight:
            result = await with_retries(lambda: call(tiles), where, args.retries)
        consume(np.arange(first, first + len(tiles)), result)
        progress.update(len(tiles))

    pending: set[asyncio.Task] = set()
    buffered, first = [], 0
    rows = read_rows(job, grid)
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gdal")  # one thread: rasterio's env is per thread
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await loop.run_in_executor(reader, next, rows, None)
            if item is not None:
                buffered.append(item[1])
            while buffered and (sum(len(t) for t in buffered) >= args.batch or item is None):
                tiles = np.concatenate(buffered)
                batch, rest = tiles[: args.batch], tiles[args.batch :]
                buffered = [rest] if len(rest) else []
                pending.add(asyncio.create_task(infer(first, batch)))
                first += len(batch)
                while len(pending) >= 2 * (args.inflight or 2):  # bounded read-ahead: flat memory
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            if item is None:
                break
        for task in asyncio.as_completed(pending):
            await task
    finally:
        for task in pending:
            task.cancel()
        await loop.run_in_executor(reader, rows.close)
        reader.shutdown()


def _class_index(text: str, names: tuple[str, ...]) -> int:
    if text in names:
        return names.index(text)
    if text.isascii() and text.isdigit() and int(text) < len(names):
        return int(text)
    raise SceneError(f"--explain {text[:40]!r} is not a class of the model: use one of {', '.join(names)} "
                     f"or an index 0..{len(names) - 1}")


def _temp_beside(path: Path) -> Path:
    """A hidden file in the final folder (so the rename is atomic), with the permissions a new file would get."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def write_outputs(job: Job, args, probabilities: np.ndarray, canvas, explain: int | None) -> None:
    """Each file is written beside its final name and renamed into place only when complete."""
    classmap = scene.ClassMap(job.grid, probabilities)
    cell_px = (job.grid.tile[0] / job.factors[0], job.grid.tile[1] / job.factors[1])
    geo = job.geo if job.geo.crs is not None or not job.geo.transform.is_identity else None
    renames = []
    try:
        tmp = _temp_beside(job.out)
        renames.append((tmp, job.out))
        geotiff.write_classmap(str(tmp), classmap.classes, classmap.confidence, geo, cell_px,
                               list(job.meta.class_names), job.meta.colors,
                               probabilities if args.probabilities else None,
                               tags={"model": job.target.model, "version": str(job.target.version)})
        if canvas is not None:
            heat_path = job.out.with_name(job.out.stem + ".heatmap.tif")
            tmp = _temp_beside(heat_path)
            renames.append((tmp, heat_path))
            stride = (cell_px[0] / canvas.map_size[0], cell_px[1] / canvas.map_size[1])
            geotiff.write_heatmap(str(tmp), canvas.data, geo, stride,
                                  {"class": job.meta.class_names[explain], "method": args.method})
        for tmp, final in renames:
            tmp.replace(final)
    finally:
        for tmp, _ in renames:
            tmp.unlink(missing_ok=True)


def summary(job: Job, probabilities: np.ndarray, seconds: float) -> dict:
    classmap = scene.ClassMap(job.grid, probabilities)
    km2 = job.source_shape[0] * job.gsd[0] * job.source_shape[1] * job.gsd[1] / 1e6
    shares = classmap.composition()
    return {
        "input": str(job.path), "output": str(job.out), "model": job.target.model, "version": job.target.version,
        "crs": job.geo.crs.to_string() if job.geo.crs else None, "input_gsd_m": list(job.gsd),
        "model_gsd_m": job.meta.gsd_m, "rows": job.grid.rows, "cols": job.grid.cols, "tiles": len(job.grid),
        "area_km2": round(km2, 4), "seconds": round(seconds, 3), "tiles_per_s": round(len(job.grid) / seconds, 1),
        "km2_per_s": round(km2 / seconds, 3),
        "area_km2_per_class": {name: round(float(shares[i]) * km2, 4) for i, name in enumerate(job.meta.class_names)},
    }


async def _main(args) -> dict:
    from gateway.app import build
    from gateway.core import Pin
    from gateway.settings import Settings

    core, manager = build(Settings())
    await core.backend.start()
    try:
        await manager.sync(force=True)  # local: loads the configured versions (a pinned one below if needed)
        try:
            labels = core.router.config(args.model or core.settings.model_name).labels
            stable = "stable" if args.version is None and "stable" in labels else None
            routed, _ = core.router.route(Pin(args.model, args.version, stable))
            target = Target(routed.model, routed.version)  # a number: a label moving mid-run cannot mix versions
            meta = core.backend.meta(target.model, target.version)
        except GatewayError as exc:
            raise SceneError(exc.message) from None
        result = await run(plan(args, meta, target), core.backend, args)
    finally:
        await core.backend.close()
    summary_path = args.output.with_suffix(".json")
    tmp = _temp_beside(summary_path)
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(summary_path)
    return result


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = asyncio.run(_main(args))
    except SceneError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"error: {' '.join(exc.message.split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(json.dumps({k: result[k] for k in ("output", "tiles", "seconds", "tiles_per_s", "km2_per_s")}))
    return 0
