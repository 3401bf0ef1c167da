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
from collections.abc import Iterable
from dataclasses import dataclass

from gateway import cam
from gateway.decoding import ImageHeader
from gateway.errors import Overloaded, PayloadTooLarge

# One tile through `serving_default` in the 32-tile chunks a scene is sent in: about 1.4 ms of this machine's CPU
# (7.7 ms measured at batch 32 while other jobs held the cores, 2.6x their batch-1 figure against README's 3.7 ms),
# the time to decode 200,000 JPEG pixels.
TILE_COST = 200_000
# Measured at batch 1 (README "The SavedModel contract"): serving_default 3.7 ms, gradcam 3.9 ms, the two-stage
# gradcam_multilayer 5.4 ms.
SINGLE_LAYER_WEIGHT = 3.9 / 3.7
MULTI_LAYER_WEIGHT = 5.4 / 3.7
RETRY_AFTER_S = 1
# Decoding time per pixel relative to JPEG (7 ns), measured on 2000x2000 images here with OpenCV: BMP 2 ns, WebP 17,
# PNG 19 (8-bit) and 50 (16-bit), TIFF 33 (16-bit), GIF 73. The slower depth counts: headers do not say it reliably.
DECODE_WEIGHT = {"jpeg": 1, "bmp": 1, "webp": 3, "png": 7, "tiff": 5, "gif": 10}


def method_weight(method: str | None) -> float:
    """Model work per tile relative to a prediction: None is /predict; multi-layer CAM methods cost the most."""
    if method is None:
        return 1.0
    return MULTI_LAYER_WEIGHT if method in cam.MULTI_LAYER else SINGLE_LAYER_WEIGHT


def request_cost(headers: Iterable[ImageHeader], method: str | None = None, tiles: int | None = None) -> int:
    """Pixel-equivalents of one request: decoding each image (`decoding.probe`'s header), plus the model's work on
    `tiles` tiles (default: one per image, each squashed to the model's input) weighted by `method`."""
    headers = list(headers)
    tiles = len(headers) if tiles is None else tiles
    decoding = sum(h.pixels * DECODE_WEIGHT.get(h.format, max(DECODE_WEIGHT.values())) for h in headers)
    return decoding + math.ceil(tiles * TILE_COST * method_weight(method))


@dataclass
class WorkBudget:
    """Pixel-equivalents admitted and not yet finished. Used from the event loop only, so it needs no lock."""

    capacity: int
    in_flight: int = 0

    def take(self, cost: int) -> None:
        """Admit `cost`, or refuse at once: 413 when it alone exceeds the whole budget (it could never run),
        503 with Retry-After when the work already in flight leaves no room for it now."""
        if cost > self.capacity:
            raise PayloadTooLarge(f"the request needs {cost:,} pixel-equivalents of work; one request may use at most "
                                  f"{self.capacity:,}: send fewer or smaller images")
        if self.in_flight + cost > self.capacity:
            raise Overloaded(f"the gateway has {self.in_flight:,} of {self.capacity:,} pixel-equivalents of work in "
                             f"flight and cannot take {cost:,} more now", retry_after=RETRY_AFTER_S)
        self.in_flight += cost

    def give_back(self, cost: int) -> None:
        self.in_flight -= cost
