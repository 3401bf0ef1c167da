"""The gateway's one core, shared by the HTTP and gRPC front doors: decode, route, batch, call, explain, render."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np

from gateway import cam, render
from gateway.backends.base import GRADCAM, GRADCAM_MULTILAYER, Backend, Explanation, Prediction, Target, VersionMeta
from gateway.batching import MicroBatcher
from gateway.decoding import declared_pixels, decode_image, resize
from gateway.errors import DeadlineExceeded, GatewayError, InvalidParameter, NotFound, Overloaded
from gateway.metrics import Metrics
from gateway.rollout.router import PINNED
from gateway.settings import Settings

CLIENT_STATUSES = ("ok", "400", "404", "413", "415", "422")  # the caller's mistake, not the version's fault
INLINE_BYTES = 64 * 1024  # decode on the event loop below this (about a millisecond of work)
INLINE_PIXELS = 256 * 256  # render on the event loop below this


@dataclass(frozen=True)
class Pin:
    """What the caller asked for: a model, optionally pinned to a version or a label, and a routing key."""

    model: str | None = None
    version: int | None = None
    label: str | None = None
    routing_key: str | None = None


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

    @asynccontextmanager
    async def admit(self):
        """Bounded concurrency: past `max_inflight`, refuse at once (503 + Retry-After) instead of queueing."""
        if self._admitted >= self.settings.max_inflight:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(f"the gateway is at its limit of {self.settings.max_inflight} requests", retry_after=1)
        self._admitted += 1
        self.metrics.inflight.inc()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                yield
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {self.settings.request_timeout_s:g} s") from None
        finally:
            self._admitted -= 1
            self.metrics.inflight.dec()

    async def decode(self, data: bytes) -> np.ndarray:
        """Small images inline (a thread hop costs more than decoding a tile); large ones off the event loop. Small in
        declared pixels too: a 46 kB PNG may declare 4000x4000 and take 0.3 s to decode, stalling every request."""
        if len(data) <= INLINE_BYTES and (declared_pixels(data) or 0) <= INLINE_PIXELS:
            return decode_image(data, self.settings.max_image_pixels)
        return await asyncio.to_thread(decode_image, data, self.settings.max_image_pixels)

    def _resolve(self, pin: Pin) -> tuple[Target, VersionMeta, str]:
        target, role = self.router.route(pin)
        meta = self.backend.meta(target.model, target.version)
        return target, meta, role

    async def _batched(self, target: Target, signature: str, images: np.ndarray, extra: np.ndarray, call, split):
        """One request's share of a micro-batched backend call, timed per signature."""
        async def run(x: np.ndarray, e: np.ndarray):
            started = time.perf_counter()
            try:
                return await call(x, e)
            finally:
                self.metrics.backend_latency.labels(signature).observe(time.perf_counter() - started)

        return await self.batcher.submit((target, signature), images, extra, run, split)

    async def _predict_batch(self, target: Target, images: np.ndarray) -> Prediction:
        timeout = self.settings.request_timeout_s
        return await self._batched(target, "serving_default", images, np.zeros(len(images), np.int32),
                                   lambda x, _: self.backend.predict(x, target, timeout), _split_prediction)

    async def _explain_batch(self, target: Target, image: np.ndarray, class_index: int, method: str) -> Explanation:
        """Only multi-layer methods pay for the previous stage's gradients (a backward pass through the last)."""
        timeout = self.settings.request_timeout_s
        signature = GRADCAM_MULTILAYER if method in cam.MULTI_LAYER else GRADCAM
        return await self._batched(target, signature, image[None], np.array([class_index], np.int32),
                                   lambda x, c: self.backend.explain(x, c, target, timeout, signature),
                                   _split_explanation)

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
            except NotFound:
                status = "404"
                if role == PINNED or attempt == 2:
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
                self.router.observe(role, elapsed, failed=status not in CLIENT_STATUSES)
        raise AssertionError("unreachable")

    async def predict(self, encoded: list[bytes], k: int, pin: Pin, request_id: str | None = None) -> PredictResult:
        if not 1 <= k <= self.settings.max_top_k:
            raise InvalidParameter(f"top_k must be between 1 and {self.settings.max_top_k}, got {k}")
        if not encoded:
            raise InvalidParameter("no images in the request")
        if len(encoded) > self.settings.max_batch_instances:
            raise InvalidParameter(f"{len(encoded)} images in one request; the limit is "
                                   f"{self.settings.max_batch_instances}")
        request_id = request_id or uuid.uuid4().hex
        async with self.admit():
            decoded = [await self.decode(data) for data in encoded]

            async def work(target: Target, meta: VersionMeta) -> PredictResult:
                batch = np.stack([resize(image, meta.input_size) for image in decoded])
                result = await self._predict_batch(target, batch)
                names = self.backend.meta(target.model, result.version).class_names
                self.router.mirror(self, target, batch, result)
                return PredictResult(target.model, result.version,
                                     [top_k(p, min(k, len(names)), names) for p in result.probabilities], request_id)

            return await self._observed("predict", pin, work)

    def _class_index(self, choice: ClassChoice, names: tuple[str, ...]) -> int | None:
        """-1 (top class), a concrete index, or None when a rank needs the probabilities first."""
        given = [x for x in (choice.label, choice.index, choice.rank) if x is not None]
        if len(given) > 1:
            raise InvalidParameter("give at most one of class (label or index) and rank")
        if choice.label is not None:
            if choice.label not in names:
                raise InvalidParameter(f"unknown class {choice.label!r}; classes: {', '.join(names)}")
            return names.index(choice.label)
        if choice.index is not None:
            if not 0 <= choice.index < len(names):
                raise InvalidParameter(f"class index {choice.index} out of range 0..{len(names) - 1}")
            return choice.index
        if choice.rank is not None:
            if not 1 <= choice.rank <= len(names):
                raise InvalidParameter(f"rank must be between 1 and {len(names)}, got {choice.rank}")
            return None if choice.rank > 1 else -1
        return -1

    async def gradcam(self, encoded: bytes, choice: ClassChoice, options: CamOptions, pin: Pin,
                      request_id: str | None = None) -> GradCamResult:
        if options.method not in cam.METHODS:
            raise InvalidParameter(f"unknown method {options.method!r}; methods: {', '.join(cam.METHODS)}")
        if options.colormap not in render.COLORMAPS:
            raise InvalidParameter(f"unknown colormap {options.colormap!r}; colormaps: {', '.join(render.COLORMAPS)}")
        if not 0 <= options.alpha <= 1:
            raise InvalidParameter(f"alpha must be between 0 and 1, got {options.alpha}")
        if options.max_side is not None and options.max_side < 1:
            raise InvalidParameter(f"max_side must be at least 1, got {options.max_side}")
        max_side = min(options.max_side or self.settings.max_output_side, self.settings.max_output_side)
        request_id = request_id or uuid.uuid4().hex
        async with self.admit():
            image = await self.decode(encoded)

            async def work(target: Target, meta: VersionMeta) -> GradCamResult:
                x = resize(image, meta.input_size)
                index = self._class_index(choice, meta.class_names)
                if index is None:  # explain the rank-th class: rank it first, on the same version
                    ranked = await self._predict_batch(Target(target.model, target.version), x[None])
                    index = int(np.argsort(-ranked.probabilities[0], kind="stable")[choice.rank - 1])
                    target = Target(target.model, ranked.version)
                explained = await self._explain_batch(target, x, index, options.method)
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

    @staticmethod
    def _render(image: np.ndarray, stages, options: CamOptions, max_side: int) -> tuple[np.ndarray, bytes]:
        heatmap = cam.compute_cam(options.method, stages)
        blended = render.overlay(image, heatmap, options.alpha, options.colormap, max_side)
        return heatmap, render.encode_png(blended)

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
