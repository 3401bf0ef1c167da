"""Untrusted image bytes -> RGB uint8 arrays: the format from magic bytes, the size from Pillow's header-only open
(before any pixel exists), a strict libjpeg pass for JPEGs, pixels from OpenCV, reduced while decoding when the
caller shrinks the image anyway."""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

SUPPORTED = ("jpeg", "png", "webp", "bmp", "tiff", "gif")
# A progressive JPEG re-reads every block once per scan, so a small file with thousands of (empty) scans costs
# minutes of CPU: libjpeg-turbo's `-maxscans` guard. Encoders write about 10; 100 leaves room for unusual ones.
MAX_JPEG_SCANS = 100
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_UNSUPPORTED_MAGIC = ((b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"\x00\x00\x01\x00", "ICO"))
_PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}
# libjpeg scales in the DCT domain while decoding (memory and time shrink with the square of the factor); OpenCV's
# other decoders would decode at full size and then resize, so these flags are used for JPEG only.
_JPEG_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
_HIGH_BYTE = 1 if sys.byteorder == "little" else 0
# Pillow's own bomb guard raises past 2 x Image.MAX_IMAGE_PIXELS but only warns past Image.MAX_IMAGE_PIXELS (89 M);
# as an error, the warning refuses those sizes too, whatever GATEWAY_MAX_IMAGE_PIXELS says.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImageHeader:
    """What the header declares, in the decoder's frame (before any EXIF rotation)."""

    format: str
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def sniff(data: bytes) -> str | None:
    """The image format from its magic bytes (never from a client-supplied name or content type)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _format(data: bytes) -> str:
    if not data:
        raise InvalidImage("the image is empty")
    fmt = sniff(data)
    if fmt is None:
        other = next((name for magic, name in _UNSUPPORTED_MAGIC if data.lstrip()[:8].startswith(magic)), None)
        if other:
            raise UnsupportedMediaType(f"{other} is not a supported image type; send one of {', '.join(SUPPORTED)}")
        raise InvalidImage(f"the bytes are not an image; send one of {', '.join(SUPPORTED)}")
    return fmt


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Format and size from the header alone (Pillow's lazy open, restricted to the sniffed format): an empty or
    unknown file is 400, PDF/SVG/ICO 415, a size over `max_pixels` (or Pillow's bomb guard) 413, a progressive JPEG
    with too many scans 400, all before a pixel is allocated."""
    fmt = _format(data)
    try:
        with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[fmt]]) as image:
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"the {fmt} image declares too many pixels ({exc}); the limit is {max_pixels}") from None
    except Exception:  # Pillow's plugins raise SyntaxError, OSError, struct.error, ... on a corrupt header
        raise InvalidImage(f"the {fmt} header is truncated or corrupt: it declares no image size") from None
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the {fmt} image declares {width}x{height} pixels; the limit is {max_pixels}")
    if width * height == 0:
        raise InvalidImage(f"the {fmt} image declares {width}x{height} pixels")
    scans = data.count(b"\xff\xda") if fmt == "jpeg" else 0  # 0xFF in entropy-coded data is always stuffed
    if scans > MAX_JPEG_SCANS:
        raise InvalidImage(f"the jpeg image has {scans} scans; the limit is {MAX_JPEG_SCANS}")
    return ImageHeader(fmt, height, width)


def scale_to_cover(header: ImageHeader, size: tuple[int, int]) -> float:
    """The largest reduction (<= 1) that keeps the image at least `size` (height, width): the factor to decode at
    when it will be resized to `size` anyway. Orientation-proof: it covers `size` either way round."""
    short, long = sorted((header.height, header.width))
    return min(1.0, max(min(size) / short, max(size) / long))


def reduced_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of an image reduced by `scale` (<= 1): what `decode_image(..., target_scale=scale)` returns."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def _check_jpeg(data: bytes) -> None:
    """libjpeg's warnings, which OpenCV ignores, are errors here: a scan that ends early (even with an end-of-image
    marker appended) would otherwise come back with its missing rows grey. Decoding the luma at 1/8 scale reads every
    entropy-coded byte at a fraction of a full decode's cost (0.02 ms for a 64x64 tile, 8 ms for 2000x2000)."""
    try:
        simplejpeg.decode_jpeg(data, "GRAY", min_height=1, min_width=1, strict=True)
    except ValueError as exc:
        raise InvalidImage(f"the jpeg image is truncated or corrupt: {str(exc)[:120]}") from None


def _imdecode(header: ImageHeader, data: bytes, scale: float) -> tuple[np.ndarray, int]:
    """OpenCV's decode, and the factor by which libjpeg already reduced it (1 for other formats)."""
    factor, flags = 1, cv2.IMREAD_COLOR if header.format in ("jpeg", "tiff") else cv2.IMREAD_UNCHANGED
    if header.format == "jpeg":
        factor, flags = next(((f, fl) for f, fl in _JPEG_REDUCED if f * scale <= 1 + 1e-9), (factor, flags))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise InvalidImage(f"could not decode the {header.format} image: it is truncated or corrupt")
    return image, factor


def _to_8bit(image: np.ndarray) -> np.ndarray:
    """16-bit: the high byte (integer, a strided view copied once; maps 257·v back to v exactly and is never more than
    one level below round(x / 257)). Float: [0, 1] or [0, 255] data, clipped."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.ascontiguousarray(np.ascontiguousarray(image).view(np.uint8)[..., _HIGH_BYTE::2])
    scaled = image.astype(np.float32) * (255 if image.max() <= 1 else 1)
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


def _over_white(bgra: np.ndarray) -> np.ndarray:
    """Transparent pixels composited over white in uint8: 255 - (255 - c) · a / 255, no float image."""
    alpha = cv2.cvtColor(cv2.extractChannel(bgra, 3), cv2.COLOR_GRAY2BGR)
    ink = cv2.multiply(cv2.bitwise_not(cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)), alpha, scale=1 / 255)
    return cv2.bitwise_not(ink)


def _target(header: ImageHeader, image: np.ndarray, factor: int, scale: float) -> tuple[int, int]:
    """The reduced (height, width). After a DCT-scaled decode, from the header's sides (swapped when OpenCV applied an
    EXIF rotation), since the decoded sides were rounded up; otherwise from the decoded image itself."""
    if factor == 1:
        return reduced_size(image.shape[0], image.shape[1], scale)
    height, width = header.height, header.width
    if height != width and (image.shape[0] > image.shape[1]) != (height > width):
        height, width = width, height
    return reduced_size(height, width, scale)


def decode_image(data: bytes, max_pixels: int, target_scale: float | None = None,
                 header: ImageHeader | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3], or a GatewayError. JPEG/TIFF honour EXIF orientation; GIF gives its first frame.

    With `target_scale` < 1 the image comes back reduced by that factor (`reduced_size`, INTER_AREA), and no larger
    copy than needed ever exists: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg when the factor allows, and
    other formats are reduced straight after decoding, before any colour conversion. `header`: `probe`'s answer for
    these bytes, when the caller has it already.
    """
    header = header or probe(data, max_pixels)
    if target_scale is not None and not target_scale > 0:
        raise ValueError(f"target_scale must be positive, got {target_scale}")
    scale = min(1.0, target_scale or 1.0)
    if header.format == "jpeg":
        _check_jpeg(data)
    image, factor = _imdecode(header, data, scale)
    if factor == 1 and image.shape[0] * image.shape[1] > max_pixels:  # a decoder that disagrees with the header
        raise PayloadTooLarge(f"the image has {image.shape[1]}x{image.shape[0]} pixels; the limit is {max_pixels}")
    try:
        if image.ndim == 3 and image.shape[2] == 4:
            image = _over_white(_to_8bit(image))
        target = _target(header, image, factor, scale)
        if image.shape[:2] != target:
            image = cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA)
        image = _to_8bit(image)
        if image.ndim == 2 or image.shape[2] == 1:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    except cv2.error:
        raise InvalidImage(f"the {header.format} image has an unsupported layout ({image.dtype}, {image.shape})") \
            from None


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To the model's (height, width): area averaging when shrinking (no aliasing), bilinear when growing."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
