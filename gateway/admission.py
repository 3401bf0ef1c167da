"""Admission by cost: a request's work is known from its image headers before anything is decoded, and the work in
flight is kept under a budget, so that under overload requests are answered or refused at once, never queued until
they time out.

The unit is the pixel-equivalent: the cost of decoding one JPEG pixel (about 8 ns of one core here). A request
costs its declared pixels, weighted by how slow their format decodes, plus `TILE_COST` per 64x64 tile the model
runs, times the CAM method's weight. Pixels also bound memory: images are decoded one at a time per request, so the
decoded images in flight never exceed the budget's pixels (3 bytes each as RGB).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway import cam
from gateway.decoding import ImageHeader
from gateway.errors import Overloaded, PayloadTooLarge

# Measured at batch 1 (README "The SavedModel contract"): serving_default 3.7 ms, gradcam 3.9 ms, the two-stage
# gradcam_multilayer 5.4 ms.
SINGLE_LAYER_WEIGHT = 3.9 / 3.7
MULTI_LAYER_WEIGHT = 5.4 / 3.7
IDLE_SECONDS_PER_UNIT = 7e-9  # one JPEG pixel decoded, on one idle core
# An idle backend call of n tiles takes IDLE_CALL_S + n x IDLE_TILE_S: 3.7 ms at n = 1 (README), and 7.7 ms a tile
# was measured at n = 32 with other jobs holding the cores, 2.6x their batch-1 figure: about 1.3 ms idle.
IDLE_CALL_S, IDLE_TILE_S = 2.4e-3, 1.33e-3
TILE_COST = round(IDLE_TILE_S / IDLE_SECONDS_PER_UNIT)  # 190,000: a tile costs the model what 190,000 pixels cost
# ... of the model they were measured on (widths 32/64/128): a version's tiles weigh its multiply-adds against these.
REFERENCE_MULTIPLY_ADDS = 106_792_192
LEARN_FROM = 1_000_000  # requests below this cost are never refused on the estimate (their time is overheads)
LEARNING_RATE = 0.2
HALF_LIFE_S = 30.0
HEADROOM = 0.8  # refuse what is estimated to need more than this share of the deadline
CORES = len(os.sched_getaffinity(0))
# Slowdown per unit of load average per core: 625 tiles took 13 ms each at a load of 5 per core here, 10x idle.
LOAD_SLOWDOWN = 2.0
# Decoding time per pixel relative to JPEG (7 ns), measured on 2000x2000 images here with OpenCV: BMP 2 ns, WebP 17,
# PNG 19 (8-bit) and 50 (16-bit), TIFF 33 (16-bit), GIF 73. The slower depth counts: headers do not say it reliably.
DECODE_WEIGHT = {"jpeg": 1, "bmp": 1, "webp": 3, "png": 7, "tiff": 5, "gif": 10}


def method_weight(method: str | None) -> float:
    """Model work per tile relative to a prediction: None is /predict; multi-layer CAM methods cost the most."""
    if method is None:
        return 1.0
    return MULTI_LAYER_WEIGHT if method in cam.MULTI_LAYER else SINGLE_LAYER_WEIGHT


def tile_weight(multiply_adds: int | None) -> float:
    """A version's work per tile relative to the model the constants were measured on: a wider network or an 8-view
    export costs that many times more a tile (its exported multiply-adds); 1 for a version exported without them."""
    return multiply_adds / REFERENCE_MULTIPLY_ADDS if multiply_adds else 1.0


def request_cost(headers: Iterable[ImageHeader], method: str | None = None, tiles: float | None = None) -> int:
    """Pixel-equivalents of one request: decoding each image (`decoding.probe`'s header), plus the model's work on
    `tiles` tiles (default: one per image, each squashed to the model's input; times `tile_weight` for the version
    that runs them) weighted by `method`."""
    headers = list(headers)
    tiles = len(headers) if tiles is None else tiles
    decoding = sum(h.pixels * DECODE_WEIGHT.get(h.format, max(DECODE_WEIGHT.values())) for h in headers)
    return decoding + math.ceil(tiles * TILE_COST * method_weight(method))


@dataclass
class WorkBudget:
    """Pixel-equivalents admitted and not yet finished, and how much slower than idle the machine serves now. Used
    from the event loop only, so it needs no lock.

    The constants above hold on an idle machine; when the cores are shared the same work takes several times longer
    (12x measured here with other jobs running), and a request admitted on the constants alone would end in a 504.
    So the slowdown is learnt from every backend call (its time against the idle time of a call that size) and from
    requests that time out, and a large request whose estimate does not fit in the deadline is refused at once with
    503. The slowdown decays back to 1 (half-life `HALF_LIFE_S`), so one slow spell does not refuse large requests for
    ever.
    """

    capacity: int
    deadline_s: float = 10.0
    slowdown: float = 1.0
    in_flight: int = 0
    _learnt_at: float = field(default_factory=lambda: time.monotonic())  # looked up per budget, not at import

    def estimate_s(self, cost: int) -> float:
        """How long `cost` would take now: at the idle rate, times the recent slowdown decayed towards 1, and at
        least the load average per core (known before any call has been timed, e.g. just after start-up)."""
        now = time.monotonic()
        elapsed = max(0.0, now - self._learnt_at)  # a clock read before this budget's own must not grow it
        self.slowdown = 1 + (self.slowdown - 1) * 0.5 ** (elapsed / HALF_LIFE_S)
        self._learnt_at = now
        return cost * IDLE_SECONDS_PER_UNIT * max(self.slowdown, LOAD_SLOWDOWN * os.getloadavg()[0] / CORES)

    def take(self, cost: int) -> None:
        """Admit `cost`, or refuse at once: 413 when it alone exceeds the whole budget (it could never run),
        503 with Retry-After when the work in flight leaves no room for it now or it would not finish in time."""
        if cost > self.capacity:
            raise PayloadTooLarge(f"the request needs {cost:,} pixel-equivalents of work; one request may use at most "
                                  f"{self.capacity:,}: send fewer or smaller images")
        if self.in_flight + cost > self.capacity:
            raise Overloaded(f"the gateway has {self.in_flight:,} of {self.capacity:,} pixel-equivalents of work in "
                             f"flight and cannot take {cost:,} more now")
        estimate = self.estimate_s(self.in_flight + cost) if cost >= LEARN_FROM else 0.0  # it shares the cores
        if estimate > HEADROOM * self.deadline_s:
            raise Overloaded(f"the gateway is busy: this request would take about {estimate:.0f} s now, past the "
                             f"{self.deadline_s:g} s deadline")
        self.in_flight += cost

    def _learn(self, slowdown: float, at_least: bool = False) -> None:
        self.estimate_s(0)  # decay up to now first
        if at_least:
            self.slowdown = max(self.slowdown, slowdown)
        else:
            self.slowdown += LEARNING_RATE * (max(1.0, slowdown) - self.slowdown)

    def observe_backend(self, tiles: float, elapsed_s: float) -> None:
        """A backend call of `tiles` tiles (times their `tile_weight`) took `elapsed_s`."""
        self._learn(elapsed_s / (IDLE_CALL_S + tiles * IDLE_TILE_S))

    def give_back(self, cost: int, elapsed_s: float | None = None) -> None:
        """Release `cost`; a request that timed out (`elapsed_s` past the deadline) says the machine is at least that
        much slower than idle."""
        self.in_flight -= cost
        if elapsed_s is not None and elapsed_s >= self.deadline_s and cost >= LEARN_FROM:
            self._learn(elapsed_s / (cost * IDLE_SECONDS_PER_UNIT), at_least=True)
