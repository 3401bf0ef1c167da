"""The gateway's one core, shared by the HTTP and gRPC front doors: decode, route, batch, call, explain, render."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import cv2
import numpy as np

from gateway import admission, cam, geotiff, render, scene, validation
from gateway.backends.base import GRADCAM, GRADCAM_MULTILAYER, Backend, Explanation, Prediction, Target, VersionMeta
from gateway.batching import MicroBatcher
from gateway.decoding import ImageHeader, decode_image, probe, resize, scale_to_cover, sniff
from gateway.errors import DeadlineExceeded, GatewayError, InvalidParameter, NotFound, Overloaded, PayloadTooLarge
from gateway.metrics import Metrics
from gateway.rollout.router import PINNED
from gateway.settings import Settings

CLIENT_STATUSES = ("ok", "400", "404", "413", "415", "422")  # the caller's mistake, not the version's fault
INLINE_BYTES = 64 * 1024  # decode on the event loop below this (about a millisecond of work)
INLINE_PIXELS = 256 * 256  # render on the event loop below this


class MethodNotServed(NotFound):
    """404: the version has no signature for this CAM method (a property of the version: never routed again)."""


def cam_signature(method: str) -> str:
    """Only multi-layer methods pay for the previous stage's gradients (a backward pass through the last)."""
    return GRADCAM_MULTILAYER if method in cam.MULTI_LAYER else GRADCAM


def served_methods(signatures: frozenset[str]) -> list[str]:
    """The CAM methods a version with these signatures can answer."""
    return [method for method in cam.METHODS if cam_signature(method) in signatures]


@dataclass(frozen=True)
class Pin:
    """What the caller asked for: a model, optionally pinned to a version or a label, and a routing key."""

    model: str | None = None
    version: int | None = None
    label: str | None = None
    routing_key: str | None = None

    def __post_init__(self) -> None:
        validation.check_pin(self.model, self.version, self.label, self.routing_key)  # the same rules for both doors


@dataclass(frozen=True)
class ClassChoice:
    """Which class to explain: exactly one of a label, an index or a rank (1 = top); none means the top class."""

    label: str | None = None
    index: int | None = None
    rank: int | None = None


@dataclass(frozen=True)
class CamOptions:
    method: str = cam.DEFAULT_METHOD
    alpha: float = 0.45
    colormap: str = render.DEFAULT_COLORMAP
    max_side: int | None = None
    seamless: bool = False  # scenes: blend half-overlapping windows (about 4x the CAM work) instead of one tile a cell


@dataclass(frozen=True)
class SceneImage:
    """A decoded input and what is known of its ground: GSD (y, x) in metres (None: unknown) and georeferencing."""

    pixels: np.ndarray
    gsd_m: tuple[float, float] | None = None  # of `pixels` (a reduced decode has a coarser GSD than the input)
    geo: geotiff.GeoInfo | None = None
    reduced: tuple[float, float] = (1.0, 1.0)  # input pixels per decoded pixel (y, x)

    @property
    def input_shape(self) -> tuple[int, int]:
        return round(self.pixels.shape[0] * self.reduced[0]), round(self.pixels.shape[1] * self.reduced[1])


@dataclass(frozen=True)
class Layout:
    """How a tile model covers one input: the grid at the model's GSD and the input's own GSD."""

    grid: scene.Grid
    gsd_m: tuple[float, float]  # of the decoded pixels
    reduced: tuple[float, float] = (1.0, 1.0)

    def cell_size_px(self, model_gsd: float) -> tuple[float, float]:
        """One cell's size in input pixels (h, w)."""
        return tuple(t * model_gsd / g * r for t, g, r in zip(self.grid.tile, self.gsd_m, self.reduced, strict=True))

    @property
    def input_gsd_m(self) -> float:
        """The input's own metres per pixel (geometric mean of y and x)."""
        return float(np.sqrt(self.gsd_m[0] / self.reduced[0] * self.gsd_m[1] / self.reduced[1]))


@dataclass
class SceneSummary:
    rows: int
    cols: int
    cell_size_px: tuple[float, float]
    gsd_m: float | None  # the input's metres per pixel (None: an image model given none)
    composition: list[tuple[str, int, float]]  # (label, index, fraction of the ground), largest first


@dataclass
class ClassMapResult:
    model: str
    version: int
    class_names: tuple[str, ...]
    colors: list[tuple[int, int, int]]
    classmap: scene.ClassMap
    summary: SceneSummary
    image: np.ndarray  # the input as decoded (maybe reduced), for overlays
    input_shape: tuple[int, int]  # the input's own pixels (h, w), the unit of cell_size_px
    geo: geotiff.GeoInfo | None
    request_id: str


def classmap_png(result: ClassMapResult, overlay: bool, alpha: float, max_side: int) -> bytes:
    """The class map in the version's palette, at the input's size (longest side at most `max_side`), optionally
    blended over the input."""
    h, w = result.input_shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    painted = scene.paint_classes(result.classmap.classes, result.summary.cell_size_px, result.colors, (h, w), size)
    if overlay:
        base = scene.resample(result.image, size)
        painted = cv2.addWeighted(base, 1.0 - alpha, painted, alpha, 0.0)
    return render.encode_png(painted)


def classmap_geotiff(result: ClassMapResult) -> bytes:
    """Band 1 the class index, band 2 the confidence, in the input's CRS with one cell per pixel."""
    return geotiff.classmap_bytes(result.classmap.classes, result.classmap.confidence, result.geo,
                                  result.summary.cell_size_px, list(result.class_names), result.colors,
                                  tags={"model": result.model, "version": str(result.version)})


@dataclass
class Ranked:
    label: str
    index: int
    probability: float


@dataclass
class PredictResult:
    model: str
    version: int
    predictions: list[list[Ranked]]
    request_id: str
    scenes: list[SceneSummary | None] | None = None  # per image: a scene's grid and composition, None for one tile


@dataclass
class GradCamResult:
    model: str
    version: int
    label: str
    index: int
    probability: float
    method: str
    heatmap: np.ndarray  # [h, w] in [0, 1]
    png: bytes
    request_id: str
    scene: SceneSummary | None = None


def top_k(probabilities: np.ndarray, k: int, class_names: tuple[str, ...]) -> list[Ranked]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Ranked(class_names[i], int(i), float(probabilities[i])) for i in order]


def _split_prediction(result: Prediction, start: int, stop: int) -> Prediction:
    return Prediction(result.version, result.probabilities[start:stop])


def _split_explanation(result: Explanation, start: int, stop: int) -> Explanation:
    return Explanation(
        result.version,
        result.probabilities[start:stop],
        result.class_index[start:stop],
        [(a[start:stop], g[start:stop]) for a, g in result.stages],
    )


class GatewayCore:
    def __init__(self, settings: Settings, backend: Backend, router, metrics: Metrics):
        self.settings = settings
        self.backend = backend
        self.router = router
        self.metrics = metrics
        self.batcher = MicroBatcher(settings.max_batch_size, settings.batch_slots,
                                    on_batch=lambda sig, n: metrics.batch_size.labels(sig).observe(n))
        self._admitted = 0
        self.budget = admission.WorkBudget(settings.max_inflight_pixels, settings.request_timeout_s)

    @asynccontextmanager
    async def admit(self, cost: int = 0):
        """Bounded concurrency and bounded work: past `max_inflight` requests, or past `max_inflight_pixels` of work
        in flight (`cost` from `plan`, or `admission.request_cost`), refuse at once (503 + Retry-After) instead of
        queueing; a request costing more than the whole budget is 413."""
        if self._admitted >= self.settings.max_inflight:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(f"the gateway is at its limit of {self.settings.max_inflight} requests")
        try:
            self.budget.take(cost)
        except GatewayError as exc:
            self.metrics.rejected.labels("over_budget" if exc.http_status == 503 else "too_costly").inc()
            raise
        self._admitted += 1
        self.metrics.inflight.inc()
        started, served = time.perf_counter(), False  # served or timed out: its time teaches the budget
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                yield
            served = True
        except TimeoutError:
            served = True
            raise DeadlineExceeded(f"no answer within {self.settings.request_timeout_s:g} s") from None
        finally:
            self._admitted -= 1
            self.budget.give_back(cost, time.perf_counter() - started if served else None)
            self.metrics.inflight.dec()

    async def decode(self, data: bytes, scale: float | None = None, header: ImageHeader | None = None) -> np.ndarray:
        """Small images inline (a thread hop costs more than decoding a tile); large ones off the event loop. Small in
        declared pixels too: a 46 kB PNG may declare 4000x4000 and take 0.3 s to decode, stalling every request.
        `scale` < 1 reduces the image while decoding (`decode_image`); `header` is `probe`'s, when already read."""
        header = header or probe(data, self.settings.max_image_pixels)
        if len(data) <= INLINE_BYTES and header.pixels <= INLINE_PIXELS:
            return decode_image(data, self.settings.max_image_pixels, scale, header)
        return await asyncio.to_thread(decode_image, data, self.settings.max_image_pixels, scale, header)

    def plan(self, encoded: list[bytes], pin: Pin, gsd_m: float | None, method: str | None = None,
             render_side: int | None = None, seamless: bool = False) -> tuple[int, list[tuple[ImageHeader, float]]]:
        """(the request's cost, each image's header and decode scale), from the headers alone: an unreadable,
        unsupported or oversized image is refused here, before anything is admitted or decoded. The tiles and the
        scale follow `layout`: a scene is decoded at most at the model's GSD, a single tile at most at the size that
        still covers the model's input, or `render_side` when the image is drawn on. A `seamless` scene heat map also
        pays for its windows."""
        limit = self.settings.max_image_pixels
        geo = [geotiff.probe(data, limit) if sniff(data) == "tiff" else None for data in encoded]
        headers = [g[0] if g else probe(data, limit) for g, data in zip(geo, encoded, strict=True)]
        meta, weight = self._planning(pin)
        reductions = [self._reduction(header, meta, g[1][1] if g and g[1] else gsd_m, render_side, seamless)
                      for header, g in zip(headers, geo, strict=True)]
        reductions = [(tiles, runs, 1.0 if g else scale)
                      for (tiles, runs, scale), g in zip(reductions, geo, strict=True)]
        most = max(tiles for tiles, _, _ in reductions)
        if most > self.settings.max_scene_tiles:  # as `layout` would say, but before decoding a pixel
            raise PayloadTooLarge(f"the scene needs {most} tiles at {meta.gsd_m:g} m; the limit per request is "
                                  f"{self.settings.max_scene_tiles}: use `python -m gateway scene IN.tif OUT.tif` "
                                  "for large rasters")
        cost = admission.request_cost(headers, method, weight * sum(runs for _, runs, _ in reductions))
        return cost, [(header, scale) for header, (_, _, scale) in zip(headers, reductions, strict=True)]

    def _planning(self, pin: Pin) -> tuple[VersionMeta | None, float]:
        """The metadata of the version a request would most likely reach (input size and GSD are the model's), and
        the largest tile weight among those it may reach: during a rollout a canary that costs more a tile must not be
        admitted at the stable version's price. Without routing (which would draw the canary split twice); (None, 1)
        when nothing is served: `_observed` says so."""
        try:
            config, versions = self.router.reachable(pin)
            metas = [self.backend.meta(config.name, v) for v in versions]
        except (GatewayError, ValueError):
            return None, 1.0
        if not metas:
            return None, 1.0
        return metas[0], max(admission.tile_weight(m.multiply_adds) for m in metas)

    @staticmethod
    def _reduction(header: ImageHeader, meta: VersionMeta | None, gsd_m: float | None, render_side: int | None,
                   seamless: bool = False) -> tuple[int, int, float]:
        """(the image's tiles, the tiles the model will run on it: those plus a seamless heat map's windows, the scale
        it can be decoded at without losing anything)."""
        if meta is None:
            return 1, 1, 1.0
        tiles, runs, scale = 1, 1, scale_to_cover(header, meta.input_size)
        if meta.is_tile:
            factor = (gsd_m or meta.gsd_m) / meta.gsd_m
            size = scene.resampled_size((header.height, header.width), (factor, factor))
            if scene.is_scene(size, meta.input_size):
                tiles, scale = len(scene.Grid(size, meta.input_size)), factor
                runs = tiles + (len(scene.BlendGrid(size, meta.input_size)) if seamless else 0)
        if render_side:
            scale = max(scale, render_side / max(header.height, header.width))
        return tiles, runs, min(1.0, scale)

    def _resolve(self, pin: Pin) -> tuple[Target, VersionMeta, str]:
        target, role = self.router.route(pin)
        meta = self.backend.meta(target.model, target.version)
        return target, meta, role

    async def _batched(self, target: Target, signature: str, images: np.ndarray, extra: np.ndarray, call, split):
        """One request's share of a micro-batched backend call, timed per signature."""
        weight = admission.tile_weight(self.backend.meta(target.model, target.version).multiply_adds)

        async def run(x: np.ndarray, e: np.ndarray):
            started = time.perf_counter()
            try:
                return await call(x, e)
            finally:
                self.metrics.backend_latency.labels(signature).observe(time.perf_counter() - started)
                self.budget.observe_backend(weight * len(x), time.perf_counter() - started)

        return await self.batcher.submit((target, signature), images, extra, run, split)

    async def _predict_batch(self, target: Target, images: np.ndarray) -> Prediction:
        timeout = self.settings.request_timeout_s
        return await self._batched(target, "serving_default", images, np.zeros(len(images), np.int32),
                                   lambda x, _: self.backend.predict(x, target, timeout), _split_prediction)

    async def _cam_signature(self, target: Target, method: str) -> str:
        """The signature `method` needs, if the routed version serves it: one answer whichever backend runs it."""
        signature = cam_signature(method)
        served = await self.backend.signatures(target.model, target.version)
        if signature not in served:
            raise MethodNotServed(f"model {target.model!r} version {target.version} cannot serve method {method!r}: "
                                  f"it has no {signature!r} signature; its methods: "
                                  f"{', '.join(served_methods(served)) or 'none'}")
        return signature

    async def _explain_batch(self, target: Target, images: np.ndarray, class_index: int, method: str) -> Explanation:
        """Only multi-layer methods pay for the previous stage's gradients (a backward pass through the last)."""
        timeout = self.settings.request_timeout_s
        signature = await self._cam_signature(target, method)
        return await self._batched(target, signature, images, np.full(len(images), class_index, np.int32),
                                   lambda x, c: self.backend.explain(x, c, target, timeout, signature),
                                   _split_explanation)

    async def _chunked(self, call, images: np.ndarray):
        """A scene's tiles in chunks of at most `max_batch_size`, so no backend message outgrows what either gRPC side
        accepts; chunks run concurrently (the micro-batcher's slots bound them). One version answers all chunks."""
        size = self.settings.max_batch_size
        parts = await asyncio.gather(*(call(images[i : i + size]) for i in range(0, len(images), size)))
        if len({p.version for p in parts}) > 1:
            raise NotFound("the version moved while the scene was being served")  # routed again once by _observed
        return parts

    async def _tile_probabilities(self, target: Target, tiles: np.ndarray) -> Prediction:
        parts = await self._chunked(lambda x: self._predict_batch(target, x), tiles)
        return Prediction(parts[0].version, np.concatenate([p.probabilities for p in parts]))

    async def _explain_tiles(self, target: Target, tiles: np.ndarray, class_index: int, method: str) -> Explanation:
        parts = await self._chunked(lambda x: self._explain_batch(target, x, class_index, method), tiles)
        return Explanation(parts[0].version, np.concatenate([p.probabilities for p in parts]),
                           np.concatenate([p.class_index for p in parts]),
                           [(np.concatenate([p.stages[i][0] for p in parts]),
                             np.concatenate([p.stages[i][1] for p in parts])) for i in range(len(parts[0].stages))])

    # --- scenes -------------------------------------------------------------------------------------------------

    def check_gsd(self, gsd_m: float | None) -> None:
        if gsd_m is not None and not self.settings.min_gsd_m <= gsd_m <= self.settings.max_gsd_m:
            raise InvalidParameter(f"gsd_m must be between {self.settings.min_gsd_m:g} and "
                                   f"{self.settings.max_gsd_m:g} metres per pixel, got {gsd_m:g}")

    async def decode_scene(self, data: bytes, gsd_m: float | None, reduction: tuple[ImageHeader, float]) -> SceneImage:
        """Pixels and ground resolution: a GeoTIFF's from its geotransform (rasterio), others from `gsd_m`; reduced
        while decoding by `reduction` (`plan`'s header and scale), the GSD then being that of the reduced pixels."""
        header, scale = reduction
        if header.format == "geotiff":  # `plan` found its georeferencing: read it once, with rasterio
            pixels, geo = await asyncio.to_thread(geotiff.read_geotiff, data, self.settings.max_image_pixels)
            own = geo.gsd_m(pixels.shape[:2])
            if own and gsd_m and abs(own[1] - gsd_m) > 0.01 * own[1]:
                raise InvalidParameter(f"gsd_m={gsd_m:g} contradicts the GeoTIFF's own {own[1]:g} m per pixel; "
                                       "omit gsd_m to use the file's")
            return SceneImage(pixels, own or ((gsd_m, gsd_m) if gsd_m else None), geo)
        pixels = await self.decode(data, scale if scale < 1 else None, header)
        full = (header.height, header.width)
        if full[0] != full[1] and (pixels.shape[0] > pixels.shape[1]) != (full[0] > full[1]):  # EXIF-rotated
            full = full[::-1]
        reduced = (full[0] / pixels.shape[0], full[1] / pixels.shape[1])
        return SceneImage(pixels, (gsd_m * reduced[0], gsd_m * reduced[1]) if gsd_m else None, reduced=reduced)

    def layout(self, image: SceneImage, meta: VersionMeta) -> Layout | None:
        """The grid a tile model covers this input with, or None when it is one tile (or an image model)."""
        if not meta.is_tile:
            return None
        gsd = image.gsd_m or (meta.gsd_m, meta.gsd_m)
        size = scene.resampled_size(image.pixels.shape[:2], scene.scale_factors(gsd, meta.gsd_m))
        if not scene.is_scene(size, meta.input_size):
            return None
        grid = scene.Grid(size, meta.input_size)
        if len(grid) > self.settings.max_scene_tiles:
            raise PayloadTooLarge(f"the scene needs {len(grid)} tiles ({grid.rows}x{grid.cols}) at "
                                  f"{meta.gsd_m:g} m; the limit per request is {self.settings.max_scene_tiles}: "
                                  "use `python -m gateway scene IN.tif OUT.tif` for large rasters")
        return Layout(grid, gsd, image.reduced)

    @staticmethod
    def scene_tiles(image: SceneImage, layout: Layout) -> np.ndarray:
        return layout.grid.tiles(scene.resample(image.pixels, layout.grid.size))

    async def _seamless_canvas(self, target: Target, pixels: np.ndarray, layout: Layout, index: int,
                               method: str) -> scene.BlendCanvas:
        """The scene heat map from half-overlapping windows over `pixels` (the scene at the model's GSD), explained a
        band of window rows at a time so that only one band's activations and gradients are held."""
        blend = scene.BlendGrid(layout.grid.size, layout.grid.tile)
        band = max(1, self.settings.max_batch_size // blend.cols)

        def canvas_for(map_size: tuple[int, int]) -> scene.BlendCanvas:
            try:
                return scene.BlendCanvas(blend, map_size)
            except ValueError as exc:
                raise InvalidParameter(f"seamless: {exc}") from None

        canvas = None
        for first in range(0, blend.rows, band):
            rows = range(first, min(blend.rows, first + band))
            tiles = np.concatenate([blend.row_tiles(pixels[slice(*blend.strip(r))], r) for r in rows])
            explained = await self._explain_tiles(target, tiles, index, method)
            if explained.version != target.version:
                raise NotFound("the version moved while the scene was being explained")
            cells = [(r, c) for r in rows for c in range(blend.cols)]
            canvas = await asyncio.to_thread(scene.paint_tiles, canvas, canvas_for, cells, explained.stages,
                                             explained.probabilities[:, index], method)
        return canvas

    def summary(self, classmap: scene.ClassMap, layout: Layout, meta: VersionMeta) -> SceneSummary:
        shares = classmap.composition()
        order = [int(i) for i in np.argsort(-shares, kind="stable") if shares[i] > 0]
        return SceneSummary(layout.grid.rows, layout.grid.cols, layout.cell_size_px(meta.gsd_m), layout.input_gsd_m,
                            [(meta.class_names[i], i, float(shares[i])) for i in order])

    async def _scene_predict(self, target: Target, meta: VersionMeta, image: SceneImage):
        """(probabilities [C] of the input, its class map and summary or None): a scene's, or one tile's as today."""
        layout = self.layout(image, meta)
        if layout is None:
            one = await self._predict_batch(target, resize(image.pixels, meta.input_size)[None])
            grid = scene.Grid(meta.input_size, meta.input_size)
            return one.version, one.probabilities[0], scene.ClassMap.from_tiles(grid, one.probabilities), None
        tiles = await asyncio.to_thread(self.scene_tiles, image, layout)
        version, classmap, summary = await self._classify_tiles(target, meta, layout, tiles)
        return version, classmap.distribution(), classmap, summary

    async def _classify_tiles(self, target: Target, meta: VersionMeta, layout: Layout, tiles: np.ndarray):
        result = await self._tile_probabilities(target, tiles)
        classmap = scene.ClassMap.from_tiles(layout.grid, result.probabilities)
        return result.version, classmap, self.summary(classmap, layout, meta)

    async def classmap(self, encoded: bytes, gsd_m: float | None, pin: Pin,
                       request_id: str | None = None) -> ClassMapResult:
        """A class and a confidence per cell of ground (one cell for a single tile or an image model)."""
        self.check_gsd(gsd_m)
        request_id = request_id or uuid.uuid4().hex
        cost, (reduction,) = self.plan([encoded], pin, gsd_m, render_side=self.settings.max_output_side)
        async with self.admit(cost):
            image = await self.decode_scene(encoded, gsd_m, reduction)

            async def work(target: Target, meta: VersionMeta) -> ClassMapResult:
                version, _, classmap, summary = await self._scene_predict(target, meta, image)
                meta = self.backend.meta(target.model, version)
                if summary is None:  # one cell covering the whole input
                    h, w = image.input_shape
                    i = int(classmap.composition().argmax())
                    gsd = image.gsd_m and float(np.sqrt(image.gsd_m[0] / image.reduced[0] *
                                                        image.gsd_m[1] / image.reduced[1]))
                    summary = SceneSummary(1, 1, (float(h), float(w)), gsd or meta.gsd_m,
                                           [(meta.class_names[i], i, 1.0)])
                return ClassMapResult(target.model, version, meta.class_names, meta.colors, classmap, summary,
                                      image.pixels, image.input_shape, image.geo, request_id)

            return await self._observed("classmap", pin, work)

    async def _observed(self, route: str, pin: Pin, work):
        """Run `work(target, meta)` on the routed version, recording metrics per served version.

        A routed (unpinned) request that finds its version or label gone, because a rollout step moved it while
        the request was in flight, is routed again once: rollouts lose no requests.
        """
        for attempt in (1, 2):
            target, meta, role = self._resolve(pin)
            started = time.perf_counter()
            version, status = str(target.version), "error"
            self.router.inflight[(target.model, target.version)] += 1
            try:
                result = await work(target, meta)
                version, status = str(result.version), "ok"
                return result
            except NotFound as exc:
                status = "404"
                if role == PINNED or attempt == 2 or isinstance(exc, MethodNotServed):
                    raise
                self.router.set_state(self.router.rollout_store.read())
            except GatewayError as exc:
                status = str(exc.http_status)
                raise
            finally:
                self.router.inflight[(target.model, target.version)] -= 1
                elapsed = time.perf_counter() - started
                self.metrics.requests.labels(route, target.model, version, status).inc()
                self.metrics.latency.labels(route, target.model, version).observe(elapsed)
                if status == "ok" or status not in CLIENT_STATUSES:  # a caller's mistake says nothing of a version
                    self.router.observe(role, elapsed, failed=status != "ok")
        raise AssertionError("unreachable")

    async def predict(self, encoded: list[bytes], k: int, pin: Pin, request_id: str | None = None,
                      gsd_m: float | None = None) -> PredictResult:
        validation.check_top_k(k, self.settings.max_top_k)
        if not encoded:
            raise InvalidParameter("no images in the request")
        if len(encoded) > self.settings.max_batch_instances:
            raise InvalidParameter(f"{len(encoded)} images in one request; the limit is "
                                   f"{self.settings.max_batch_instances}")
        self.check_gsd(gsd_m)
        request_id = request_id or uuid.uuid4().hex
        cost, reductions = self.plan(encoded, pin, gsd_m)
        async with self.admit(cost):  # one image at a time, each reduced as it is decoded: no N full-size images
            decoded = [await self.decode_scene(data, gsd_m, r) for data, r in zip(encoded, reductions, strict=True)]

            async def work(target: Target, meta: VersionMeta) -> PredictResult:
                """Single tiles share one backend call (and the shadow mirror); a scene ranks its class distribution."""
                layouts = [self.layout(image, meta) for image in decoded]
                singles = [i for i, layout in enumerate(layouts) if layout is None]
                probabilities: list = [None] * len(decoded)
                scenes: list[SceneSummary | None] = [None] * len(decoded)
                versions = set()
                if singles:
                    batch = np.stack([resize(decoded[i].pixels, meta.input_size) for i in singles])
                    result = await self._predict_batch(target, batch)
                    self.router.mirror(self, target, batch, result)
                    versions.add(result.version)
                    for j, i in enumerate(singles):
                        probabilities[i] = result.probabilities[j]
                for i, layout in enumerate(layouts):
                    if layout is not None:
                        version, probabilities[i], _, scenes[i] = await self._scene_predict(target, meta, decoded[i])
                        versions.add(version)
                if len(versions) > 1:
                    raise NotFound("the version moved while the request was being served")
                version = versions.pop()
                names = self.backend.meta(target.model, version).class_names
                return PredictResult(target.model, version,
                                     [top_k(p, min(k, len(names)), names) for p in probabilities], request_id,
                                     scenes if any(scenes) else None)

            return await self._observed("predict", pin, work)

    def _class_index(self, choice: ClassChoice, names: tuple[str, ...]) -> int | None:
        """-1 (top class), a concrete index, or None when a rank needs the probabilities first."""
        given = [x for x in (choice.label, choice.index, choice.rank) if x is not None]
        if len(given) > 1:
            raise InvalidParameter("give at most one of class (label or index) and rank")
        if choice.label is not None:
            if validation.check_class_label(choice.label) not in names:
                raise InvalidParameter(f"unknown class {validation.excerpt(choice.label)}; "
                                       f"classes: {', '.join(names)}")
            return names.index(choice.label)
        if choice.index is not None:
            return validation.check_class_index(choice.index, len(names))
        if choice.rank is not None:
            validation.check_rank(choice.rank, len(names))
            return None if choice.rank > 1 else -1
        return -1

    async def gradcam(self, encoded: bytes, choice: ClassChoice, options: CamOptions, pin: Pin,
                      request_id: str | None = None, gsd_m: float | None = None) -> GradCamResult:
        options = replace(options, method=validation.validate_method(options.method),
                          colormap=validation.validate_colormap(options.colormap),
                          alpha=validation.check_alpha(options.alpha),
                          max_side=validation.check_max_side(options.max_side))
        self.check_gsd(gsd_m)
        request_id = request_id or uuid.uuid4().hex
        render_side = min(options.max_side or self.settings.max_output_side, self.settings.max_output_side)
        cost, (reduction,) = self.plan([encoded], pin, gsd_m, options.method, render_side, options.seamless)
        async with self.admit(cost):
            decoded = await self.decode_scene(encoded, gsd_m, reduction)
            image = decoded.pixels
            # the overlay's longest side: as asked, else the input's own (at least 256 px), never above the cap
            max_side = render.output_side(decoded.input_shape, options.max_side, self.settings.max_output_side)

            async def work(target: Target, meta: VersionMeta) -> GradCamResult:
                layout = self.layout(decoded, meta)
                if layout is not None:
                    return await self._scene_gradcam(target, meta, decoded, layout, choice, options, max_side,
                                                     request_id)
                x = resize(image, meta.input_size)
                index = self._class_index(choice, meta.class_names)
                if index is None:  # explain the rank-th class: rank it first, on the same version
                    ranked = await self._predict_batch(Target(target.model, target.version), x[None])
                    index = int(np.argsort(-ranked.probabilities[0], kind="stable")[choice.rank - 1])
                    target = Target(target.model, ranked.version)
                explained = await self._explain_batch(target, x[None], index, options.method)
                stages = [(a[0], g[0]) for a, g in explained.stages]
                args = (image, stages, options, max_side)
                small = image.shape[0] * image.shape[1] <= INLINE_PIXELS
                heatmap, png = self._render(*args) if small else await asyncio.to_thread(self._render, *args)
                chosen = int(explained.class_index[0])
                names = self.backend.meta(target.model, explained.version).class_names
                return GradCamResult(target.model, explained.version, names[chosen], chosen,
                                     float(explained.probabilities[0, chosen]), options.method, heatmap, png,
                                     request_id)

            return await self._observed("gradcam", pin, work)

    async def _scene_gradcam(self, target: Target, meta: VersionMeta, image: SceneImage, layout: Layout,
                             choice: ClassChoice, options: CamOptions, max_side: int, request_id: str) -> GradCamResult:
        """One heat map for one class over the whole scene: `class`/`rank` refer to the scene's distribution."""
        pixels = await asyncio.to_thread(scene.resample, image.pixels, layout.grid.size)
        tiles = await asyncio.to_thread(layout.grid.tiles, pixels)
        index = self._class_index(choice, meta.class_names)
        version, classmap, summary = await self._classify_tiles(target, meta, layout, tiles)
        distribution = classmap.distribution()
        if index is None or index < 0:
            index = int(np.argsort(-distribution, kind="stable")[(choice.rank or 1) - 1])
        if options.seamless:
            canvas = await self._seamless_canvas(Target(target.model, version), pixels, layout, index, options.method)
        else:
            explained = await self._explain_tiles(Target(target.model, version), tiles, index, options.method)
            if explained.version != version:
                raise NotFound("the version moved while the scene was being explained")
            canvas = await asyncio.to_thread(self._tile_canvas, layout.grid, explained, index, options.method)
        heatmap = canvas.data
        png = await asyncio.to_thread(self._overlay, image.pixels, heatmap, options, max_side)
        names = self.backend.meta(target.model, version).class_names
        return GradCamResult(target.model, version, names[index], index, float(distribution[index]), options.method,
                             heatmap, png, request_id, summary)

    @staticmethod
    def _tile_canvas(grid: scene.Grid, explained: Explanation, index: int, method: str) -> scene.HeatmapCanvas:
        """The scene heat map from one tile per cell, each explained alone."""
        cells = [(i // grid.cols, i % grid.cols) for i in range(len(grid))]
        return scene.paint_tiles(None, lambda size: scene.HeatmapCanvas(grid, size), cells, explained.stages,
                                 explained.probabilities[:, index], method)

    @staticmethod
    def _overlay(image: np.ndarray, heatmap: np.ndarray, options: CamOptions, max_side: int) -> bytes:
        return render.encode_png(render.overlay(image, heatmap, options.alpha, options.colormap, max_side))

    @classmethod
    def _render(cls, image: np.ndarray, stages, options: CamOptions, max_side: int) -> tuple[np.ndarray, bytes]:
        heatmap = cam.compute_cam(options.method, stages)
        return heatmap, cls._overlay(image, heatmap, options, max_side)

    async def ready(self) -> tuple[bool, str]:
        """Ready when the default model's `stable` version is AVAILABLE on the backend."""
        try:
            target, _ = self.router.route(Pin())
            states = await asyncio.wait_for(self.backend.version_states(target.model), 5)
        except (GatewayError, TimeoutError) as exc:
            return False, getattr(exc, "message", "the backend did not answer")
        state = states.get(target.version, "UNKNOWN")
        ok = state == "AVAILABLE"
        return ok, f"{target.model} version {target.version} is {state}"
