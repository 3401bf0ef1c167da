"""The decoder on its own: headers read by Pillow before any pixel exists, truncated files refused, images reduced
while they are decoded, 16-bit data reduced in integers, every supported layout to the right RGB pixels."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from gateway.decoding import ImageHeader, decode_image, probe, reduced_size, scale_to_cover
from gateway.errors import GatewayError, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from tests.conftest import encode, png_declaring
from tests.test_hostile_inputs import BOMBS, FORMATS, away_from_edges, exif_rotated, peak_rss_growth, reset_peak_rss

LIMIT = 40_000_000
RNG = np.random.default_rng(11)


def smooth(height: int, width: int) -> np.ndarray:
    """A picture with detail at every scale, so that a wrong reduction shows."""
    return cv2.GaussianBlur(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)


def jpeg(image: np.ndarray, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def refusal(data: bytes, kind: type[GatewayError], **kwargs) -> str:
    with pytest.raises(kind) as caught:
        decode_image(data, kwargs.pop("max_pixels", LIMIT), **kwargs)
    return caught.value.message


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_layout_decodes_to_the_right_rgb_pixels(name):
    data, expected, tolerance, margin = FORMATS[name]
    seen = decode_image(data, LIMIT)
    assert seen.dtype == np.uint8 and seen.shape == expected.shape
    checked = away_from_edges(expected, margin) if margin else np.ones(expected.shape[:2], bool)
    assert np.abs(seen.astype(int) - expected)[checked].max() <= tolerance


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.3, 0.7, 0.97])
def test_a_jpeg_cut_short_is_refused_even_with_an_end_marker_appended(progressive, keep):
    """OpenCV decodes such a file and fills the missing rows with grey; libjpeg's warning is the only trace."""
    data = jpeg(smooth(256, 256), progressive)
    assert decode_image(data, LIMIT).shape == (256, 256, 3)
    cut = data[: int(len(data) * keep)]
    assert cv2.imdecode(np.frombuffer(cut + b"\xff\xd9", np.uint8), cv2.IMREAD_COLOR) is not None
    for hostile in (cut, cut + b"\xff\xd9"):
        assert "truncated" in refusal(hostile, InvalidImage)


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp", ".tiff", ".gif"])
def test_other_formats_cut_short_are_refused(ext):
    image = smooth(128, 128)
    data = encode(image, ext) if ext != ".gif" else _pil(image, "GIF")
    for keep in (0.5, 0.9):
        with pytest.raises(GatewayError) as caught:
            decode_image(data[: int(len(data) * keep)], LIMIT)
        assert caught.value.http_status == 400


def _pil(image: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_refused_from_the_header(name):
    before = reset_peak_rss()
    message = refusal(BOMBS[name], PayloadTooLarge, max_pixels=4_000_000)
    assert "declares" in message and peak_rss_growth(before) < 20


def test_probe_reads_the_header_only():
    header = probe(png_declaring(30_000, 1000), 40_000_000)  # no pixel data at all behind the header
    assert header == ImageHeader("png", 1000, 30_000) and header.pixels == 30_000_000
    assert probe(jpeg(smooth(48, 80)), LIMIT) == ImageHeader("jpeg", 48, 80)


@pytest.mark.parametrize(("data", "kind"), [
    (b"%PDF-1.4\n", UnsupportedMediaType), (b"<svg/>", UnsupportedMediaType), (b"\0\0\1\0\1\0", UnsupportedMediaType),
    (b"", InvalidImage), (b"hello", InvalidImage), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, InvalidImage),
    (png_declaring(0, 10), InvalidImage), (b"\xff\xd8\xff\xe0" + b"\0" * 30, InvalidImage),
])
def test_sniffing_unsupported_and_unreadable_headers(data, kind):
    refusal(data, kind)


@pytest.mark.parametrize("scale", [0.5, 0.3, 0.125, 0.1, 0.02])
def test_reduced_jpeg_decoding_matches_area_resizing(scale):
    image = smooth(600, 900)
    data = jpeg(image)
    reduced = decode_image(data, LIMIT, target_scale=scale)
    assert reduced.shape[:2] == reduced_size(600, 900, scale)
    reference = cv2.resize(decode_image(data, LIMIT), reduced.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - reference).mean() < 2.5  # libjpeg upsamples chroma at the reduced size


def test_a_large_jpeg_reduced_never_exists_at_full_size():
    """6000x6000 decoded at 1/8 by libjpeg: 108 MB of RGB at full size, 1.7 MB at 1/8."""
    data = jpeg(np.full((6000, 6000, 3), 90, np.uint8))
    before = reset_peak_rss()
    out = decode_image(data, LIMIT, target_scale=0.01)
    grown = peak_rss_growth(before)
    assert out.shape == (60, 60, 3) and np.abs(out.astype(int) - 90).max() <= 2
    assert grown < 40, f"peak RSS grew {grown:.0f} MB"


def test_reduction_follows_exif_orientation():
    """OpenCV rotates while decoding, so the reduced size is the rotated one (40 wide, 20 high stored)."""
    assert decode_image(exif_rotated(), LIMIT).shape == (40, 20, 3)
    assert decode_image(exif_rotated(), LIMIT, target_scale=0.5).shape == (20, 10, 3)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_images_keep_their_8_bit_values_and_reduce(channels):
    """257·v is v exactly; any value is within one level of round(x / 257); transparency composited over white."""
    values = RNG.integers(0, 65536, (64, 96, channels), dtype=np.uint16)
    values[:8] = (RNG.integers(0, 256, (8, 96, channels)) * 257).astype(np.uint16)
    if channels == 4:
        values[..., 3] = 65535
    data = cv2.imencode(".png", values[..., 0] if channels == 1 else values)[1].tobytes()
    rgb = decode_image(data, LIMIT)
    bgr = values[..., :3] if channels > 1 else np.repeat(values, 3, axis=2)
    exact = np.round(bgr[..., ::-1] / 257)
    assert np.array_equal(rgb[:8], exact[:8])
    assert np.abs(rgb.astype(int) - exact).max() <= 1
    assert decode_image(data, LIMIT, target_scale=0.25).shape == (16, 24, 3)


def test_a_large_16_bit_image_is_converted_without_float_copies():
    """3000x3000 RGB 16-bit is 54 MB as decoded; a float64 conversion alone would add 216 MB."""
    data = cv2.imencode(".png", np.full((3000, 3000, 3), 40000, np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1]
    before = reset_peak_rss()
    out = decode_image(data.tobytes(), LIMIT)
    grown = peak_rss_growth(before)
    assert out.shape == (3000, 3000, 3) and (out == 40000 >> 8).all()
    assert grown < 54 + 27 + 40, f"peak RSS grew {grown:.0f} MB"


def test_transparency_is_composited_before_reducing():
    """Half-transparent red over white is pink at any size: compositing after averaging would darken nothing here
    but would mix the hidden colour of fully transparent pixels into their neighbours."""
    bgra = np.zeros((64, 64, 4), np.uint8)
    bgra[:, :32] = (0, 0, 255, 128)  # half-transparent red
    bgra[:, 32:] = (0, 0, 0, 0)  # fully transparent black: must come out white
    out = decode_image(cv2.imencode(".png", bgra)[1].tobytes(), LIMIT, target_scale=0.25)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[:, :7].astype(int) - (255, 127, 127)).max() <= 1
    assert (out[:, 9:] == 255).all()


def test_scale_to_cover_keeps_the_model_input_covered():
    header = ImageHeader("jpeg", 6000, 4000)
    scale = scale_to_cover(header, (64, 64))
    assert min(reduced_size(6000, 4000, scale)) == 64
    assert scale_to_cover(ImageHeader("png", 32, 32), (64, 64)) == 1.0
    assert scale_to_cover(ImageHeader("png", 1, 3000), (64, 64)) == 1.0


def test_pixel_limit_is_checked_on_the_header_and_after_decoding():
    data = png_declaring(2001, 2000, rows=2000)
    assert "declares" in refusal(data, PayloadTooLarge, max_pixels=4_000_000)
    gif = bytearray(_pil(smooth(40, 40), "GIF"))
    gif[6:10] = struct.pack("<HH", 10, 10)  # the screen says 10x10, the frame is 40x40: OpenCV refuses the frame
    with pytest.raises(GatewayError) as caught:
        decode_image(bytes(gif), 1000)
    assert caught.value.http_status in (400, 413)
