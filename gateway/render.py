"""Heat-map rendering with OpenCV: colour a [0, 1] map, blend it over the RGB image, encode PNG quickly."""

from __future__ import annotations

import functools

import cv2
import numpy as np

# TURBO and VIRIDIS are perceptually smoother; JET is kept for familiarity but shows false bands.
COLORMAPS: dict[str, int] = {
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "jet": cv2.COLORMAP_JET,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}
DEFAULT_COLORMAP = "turbo"
PNG_COMPRESSION = 1  # latency matters more than a few kB in an API response
MIN_OUTPUT_SIDE = 256  # default overlay size for small images: a 64 px tile is shown 4x


def _check_rgb(image_rgb: np.ndarray) -> None:
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image_rgb.dtype} {image_rgb.shape}")


def output_side(shape: tuple[int, ...], max_side: int | None = None, cap: int | None = None) -> int:
    """Longest side of an overlay: `max_side` when asked (larger or smaller than the image), else the image's own but
    at least MIN_OUTPUT_SIDE so a 64 px tile is big enough to see; never above `cap` (GATEWAY_MAX_OUTPUT_SIDE)."""
    for name, value in (("max_side", max_side), ("cap", cap)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    side = max_side if max_side is not None else max(max(shape[:2]), MIN_OUTPUT_SIDE)
    return side if cap is None else min(side, cap)


def fit_side(image_rgb: np.ndarray, side: int) -> np.ndarray:
    """Scale so the longest side is exactly `side`: INTER_AREA down (no aliasing), nearest-neighbour up, so an
    enlarged tile shows the pixels the model saw as crisp squares instead of inventing smooth detail."""
    height, width = image_rgb.shape[:2]
    if side == max(height, width):
        return image_rgb
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)


def colorize(cam: np.ndarray, size: tuple[int, int], colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """RGB uint8 heat map of a [0, 1] map at (H, W); clipped before the cast because bicubic overshoots."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; valid: {', '.join(COLORMAPS)}")
    cam = np.nan_to_num(np.asarray(cam, np.float32))
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    height, width = size
    cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_CUBIC)
    levels = np.rint(np.clip(cam, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, _lut(colormap)), cv2.COLOR_BGR2RGB)


@functools.cache
def _lut(colormap: str) -> np.ndarray:
    """The colormap's 256-entry BGR table. Given a name, OpenCV rebuilds it on every call (0.17 ms, most of a
    tile's render); given the table, it only looks pixels up. Same output."""
    table = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), COLORMAPS[colormap])
    table.flags.writeable = False  # shared by every call
    return table


def overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = DEFAULT_COLORMAP,
            max_side: int | None = None, cap: int | None = None) -> np.ndarray:
    """Blend the coloured map over the image, (1 - alpha) * image + alpha * heat, RGB uint8, with its longest side at
    `output_side(image, max_side, cap)`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_rgb(image_rgb)
    base = np.ascontiguousarray(fit_side(image_rgb, output_side(image_rgb.shape, max_side, cap)))
    heat = colorize(cam, base.shape[:2], colormap)
    return cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)


def encode_png(image_rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (OpenCV wants BGR)."""
    _check_rgb(image_rgb)
    # a tile-sized overlay is a few kB either way: skip deflate there (0.13 vs 0.30 ms). Larger ones (a tile enlarged
    # to 256 px and up) get the "up" filter and run-length deflate: at 256 px 3.3 ms and 90 kB against 6.0 ms and 82 kB
    # for libpng's adaptive filters, 2.8 ms and 197 kB without deflate (CPU time on the shared 2-core host).
    small = image_rgb.shape[0] * image_rgb.shape[1] <= 128 * 128
    params = [cv2.IMWRITE_PNG_COMPRESSION, 0] if small else [
        cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
        cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
