"""Overlay rendering and PNG encoding with OpenCV (no TensorFlow)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gateway.render import COLORMAPS, MIN_OUTPUT_SIDE, colorize, encode_png, output_side, overlay
from tests.conftest import SAMPLES


def image(h: int = 60, w: int = 100) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def ramp(h: int = 7, w: int = 5) -> np.ndarray:
    return np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)


def test_colormaps_are_opencv_constants():
    assert set(COLORMAPS) == {"turbo", "viridis", "jet", "inferno", "magma", "plasma", "hot", "bone"}
    assert COLORMAPS["turbo"] == cv2.COLORMAP_TURBO and COLORMAPS["viridis"] == cv2.COLORMAP_VIRIDIS


@pytest.mark.parametrize("colormap", sorted(COLORMAPS))
def test_overlay_keeps_the_size_of_an_image_at_least_min_output_side(colormap):
    out = overlay(image(300, 500), ramp(), colormap=colormap)
    assert out.shape == (300, 500, 3) and out.dtype == np.uint8


@pytest.mark.parametrize(("shape", "max_side", "cap", "expected"), [
    ((60, 100), 50, None, (30, 50)),
    ((100, 60), 50, None, (50, 30)),
    ((60, 100), 400, None, (240, 400)),  # upscaled to what was asked
    ((64, 64), 2000, None, (2000, 2000)),
    ((64, 64), 2000, 1024, (1024, 1024)),  # ... up to the cap (GATEWAY_MAX_OUTPUT_SIDE)
    ((64, 64), None, None, (MIN_OUTPUT_SIDE, MIN_OUTPUT_SIDE)),  # a tile is shown big enough to see by default
    ((60, 100), None, None, (154, MIN_OUTPUT_SIDE)),
    ((64, 64), None, 128, (128, 128)),
    ((3000, 1500), None, 1024, (1024, 512)),  # a large image is brought down to the cap
    ((300, 500), None, None, (300, 500)),
])
def test_overlay_side(shape, max_side, cap, expected):
    out = overlay(image(*shape), ramp(), max_side=max_side, cap=cap)
    assert out.shape == (*expected, 3)
    assert output_side(shape, max_side, cap) == max(expected)


def test_upscaled_tile_keeps_its_pixels_as_squares():
    """Nearest-neighbour up: each tile pixel becomes a 4x4 block of the same colour (nothing invented)."""
    tile = image(64, 64)
    up = overlay(tile, ramp(), alpha=0.0)
    assert up.shape == (256, 256, 3)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(tile, 4, axis=0), 4, axis=1))


def test_alpha_zero_returns_the_original():
    img = image(300, 500)
    np.testing.assert_array_equal(overlay(img, ramp(), alpha=0.0), img)
    np.testing.assert_array_equal(overlay(img, ramp(), alpha=0.0, max_side=50), cv2.resize(img, (50, 30),
                                                                                         interpolation=cv2.INTER_AREA))


def test_alpha_one_is_the_heat_map_in_rgb():
    out = overlay(image(), np.ones((4, 4), np.float32), alpha=1.0, colormap="jet")
    bgr = cv2.applyColorMap(np.full((1, 1), 255, np.uint8), cv2.COLORMAP_JET)[0, 0]
    np.testing.assert_array_equal(out, np.broadcast_to(bgr[::-1], out.shape))
    assert out[0, 0, 0] > out[0, 0, 2]  # JET's top is red: red channel first in RGB


def test_blend_is_a_weighted_mean():
    img = image(300, 500)
    heat = colorize(ramp(), img.shape[:2])
    expected = np.rint(0.6 * img + 0.4 * heat.astype(np.float64))
    np.testing.assert_allclose(overlay(img, ramp(), alpha=0.4).astype(np.float64), expected, atol=1)


def test_cam_outside_unit_range_is_clipped():
    img = image()
    wild = np.array([[-3.0, 0.0], [1.0, 5.0]], np.float32)
    tame = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    # Cubic overshoot differs before clipping, so compare the clipped end points only.
    a, b = colorize(wild, (2, 2)), colorize(tame, (2, 2))
    np.testing.assert_array_equal(a, b)
    assert overlay(img, wild).dtype == np.uint8


def test_errors():
    with pytest.raises(ValueError, match=r"unknown colormap 'rainbow'.*turbo.*viridis"):
        overlay(image(), ramp(), colormap="rainbow")
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            overlay(image(), ramp(), alpha=alpha)
    with pytest.raises(ValueError, match="RGB uint8"):
        overlay(image().astype(np.float32), ramp())
    with pytest.raises(ValueError, match="2-D"):
        overlay(image(), np.ones((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="max_side"):
        overlay(image(), ramp(), max_side=0)
    with pytest.raises(ValueError, match="cap"):
        overlay(image(), ramp(), cap=-1)


@pytest.mark.parametrize("shape", [(33, 47), (256, 256), (300, 500)])  # stored, and deflated (larger than 128^2)
def test_png_round_trip(shape):
    img = image(*shape)
    data = encode_png(img)
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), img)


def test_an_enlarged_tile_compresses():
    tile = cv2.cvtColor(cv2.imread(str(SAMPLES / "Forest.jpg")), cv2.COLOR_BGR2RGB)
    png = encode_png(overlay(tile, ramp()))
    assert len(png) < 0.6 * 256 * 256 * 3
