"""Untrusted image bytes -> RGB uint8 arrays, with OpenCV, refusing oversized images before decoding them."""

from __future__ import annotations

import struct

import cv2
import numpy as np

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


def sniff(data: bytes) -> str | None:
    """The image format from its magic bytes (never from a client-supplied name or content type)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, bool]:
    """((width, height) from the first SOF, whether an EOI follows the first scan), walking the marker segments.

    Walking (not searching) skips an EXIF thumbnail's own SOF/EOI. In entropy-coded data 0xFF is always stuffed,
    so a 0xFFD9 after the first SOS can only be the real end-of-image marker: without it the file is truncated.
    """
    size, i = None, 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before a marker
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xD9 or length < 2:  # an EOI before any scan, or a corrupt segment
            break
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and size is None and i + 9 <= len(data):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            size = (w, h)
        if marker == 0xDA:
            return size, data.find(b"\xff\xd9", i + 2 + length) >= 0
        i += 2 + length
    return size, False


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength from the first IFD (the page OpenCV decodes)."""
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    found: dict[int, int] = {}
    for n in range(count):
        tag, kind, _, value = struct.unpack(order + "HHI4s", data[offset + 2 + 12 * n : offset + 14 + 12 * n])
        if tag in (256, 257) and kind in (3, 4):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _bmp_size(data: bytes) -> tuple[int, int]:
    """BITMAPCOREHEADER (OS/2, 12 bytes) stores 16-bit sizes; every later header 32-bit signed ones."""
    if struct.unpack("<I", data[14:18])[0] == 12:
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def declared_size(fmt: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header declares it, read without decoding: the guard against decompression bombs."""
    try:
        if fmt == "png":
            return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None
        if fmt == "gif":  # OpenCV refuses frames outside this logical screen
            return struct.unpack("<HH", data[6:10])
        if fmt == "bmp":
            return _bmp_size(data)
        if fmt == "webp":
            return _webp_size(data)
        if fmt == "tiff":
            return _tiff_size(data)
        return _jpeg_header(data)[0]
    except struct.error:
        return None


def declared_pixels(data: bytes) -> int | None:
    """Width x height as the header of a supported format declares it; None when it is no readable image header."""
    fmt = sniff(data)
    size = declared_size(fmt, data) if fmt else None
    return size[0] * size[1] if size else None


def _png_complete(data: bytes) -> bool:
    """Walks the chunks to IEND: a PNG cut short anywhere before its end has none."""
    i = 8
    while i + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == b"IEND":
            return True
        i += 12 + length
    return False


def is_complete(fmt: str, data: bytes) -> bool:
    """False for a JPEG or PNG whose end is missing: some decoders return the decoded part padded with grey."""
    if fmt == "jpeg":
        return _jpeg_header(data)[1]
    if fmt == "png":
        return _png_complete(data)
    return True


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Any depth, 1/3/4 channels -> RGB uint8; transparent pixels are composited over white."""
    if image.dtype == np.uint16:
        image = (image / 257).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * (255 if image.max() <= 1 else 1), 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255
        rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB).astype(np.float32)
        return (rgb * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _checked_header(fmt: str, data: bytes, max_pixels: int) -> None:
    """Refuse before decoding: an unbounded size, a bomb, or a truncated file (never a partly grey image)."""
    size = declared_size(fmt, data)
    if size is None:
        raise InvalidImage(f"the {fmt} header is truncated or corrupt: it declares no image size")
    if size[0] * size[1] > max_pixels:
        raise PayloadTooLarge(f"the {fmt} image declares {size[0]}x{size[1]} pixels; the limit is {max_pixels}")
    scans = data.count(b"\xff\xda") if fmt == "jpeg" else 0  # 0xFF in entropy-coded data is always stuffed
    if scans > MAX_JPEG_SCANS:
        raise InvalidImage(f"the jpeg image has {scans} scans; the limit is {MAX_JPEG_SCANS}")
    if not is_complete(fmt, data):
        raise InvalidImage(f"the {fmt} image is truncated: its end marker is missing")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 [H, W, 3], or a GatewayError. JPEG/TIFF honour EXIF orientation; GIF gives its first frame."""
    if not data:
        raise InvalidImage("the image is empty")
    fmt = sniff(data)
    if fmt is None:
        other = next((name for magic, name in _UNSUPPORTED_MAGIC if data.lstrip()[:8].startswith(magic)), None)
        if other:
            raise UnsupportedMediaType(f"{other} is not a supported image type; send one of {', '.join(SUPPORTED)}")
        raise InvalidImage(f"the bytes are not an image; send one of {', '.join(SUPPORTED)}")
    _checked_header(fmt, data, max_pixels)
    flags = cv2.IMREAD_COLOR if fmt in ("jpeg", "tiff") else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise InvalidImage(f"could not decode the {fmt} image: it is truncated or corrupt")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise PayloadTooLarge(f"the image has {image.shape[1]}x{image.shape[0]} pixels; the limit is {max_pixels}")
    try:
        return _to_rgb(image)
    except cv2.error:
        raise InvalidImage(f"the {fmt} image has an unsupported layout ({image.dtype}, {image.shape})") from None


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To the model's (height, width): area averaging when shrinking (no aliasing), bilinear when growing."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
