"""A generated corpus of about 200 hostile image files: bombs in every format, files cut short (with and without an
end marker put back), 16-bit and float data, huge and zero declared sizes, progressive JPEGs with many scans,
polyglots, corrupt headers and non-images. Deterministic (seeded); nothing is read from disk.

`corpus()` maps a name to the bytes; `amplification_bmp()` and `amplification_jpeg()` are the two small files that
claim 6000x6000 pixels used by the load benchmark (bench/hostile.py).
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

RNG_SEED = 14


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, depth: int = 8, colour: int = 2, raw: bytes | None = None, iend: bool = True) -> bytes:
    """A PNG with any IHDR; `raw` is the filtered scanline data (deflated here), default: zero rows for all of it,
    deflated a block at a time so that a bomb is never held uncompressed."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    if raw is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 3)
        row = 1 + (width * channels * depth + 7) // 8
        packer, total, block = zlib.compressobj(9), row * height, b"\0" * 65536
        idat = b"".join(packer.compress(block) for _ in range(total // len(block)))
        idat += packer.compress(b"\0" * (total % len(block))) + packer.flush()
    else:
        idat = zlib.compress(raw)
    body = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
    return body + (_png_chunk(b"IEND", b"") if iend else b"")


def jpeg_header_only(width: int, height: int, progressive: bool = False) -> bytes:
    """SOF and SOS for a 3-component JPEG of any size, a few bytes of scan and an EOI: OpenCV pads the rest grey."""
    sof = (b"\xff\xc2" if progressive else b"\xff\xc0") + b"\x00\x11\x08" + struct.pack(">HH", height, width)
    sof += b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    dqt = b"\xff\xdb\x00\x43\x00" + bytes([1] * 64)
    dht = b"\xff\xc4\x00\x14\x00" + bytes([1] + [0] * 15) + b"\x00"  # one DC code: category 0
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return b"\xff\xd8" + dqt + sof + dht + sos + b"\x00" * 8 + b"\xff\xd9"


def bmp_rle8(width: int, height: int, data: bytes = b"\x00\x01") -> bytes:
    """An 8-bit run-length BMP; the default data is a lone end-of-bitmap code: 60 bytes for any size."""
    palette = b"\x00\x00\x00\x00\xff\xff\xff\x00"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 2, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def gif_screen(width: int, height: int, frame: tuple[int, int] = (1, 1)) -> bytes:
    """A GIF whose logical screen is `width` x `height`, with one 1-colour frame of `frame` pixels (LZW: clear,
    0, end)."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, frame[0], frame[1], 0x80) + b"\0" * 6
    return head + descriptor + b"\x02\x02\x44\x01\x00\x3b"


def webp_vp8x(width: int, height: int) -> bytes:
    chunk = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (width - 1).to_bytes(3, "little")
    chunk += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def tiff(width: int, height: int, strip: bytes = b"", compression: int = 1, bits: int = 8, extra: tuple = ()) -> bytes:
    """A little-endian RGB TIFF with one strip; the tags say what the caller wants, true or not."""
    tags = sorted([(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
                   (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(strip)),
                   *extra])
    strip_at = 8 + 2 + 12 * len(tags) + 4
    tags = [(t, k, n, strip_at if t == 273 else v) for t, k, n, v in tags]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def _picture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2)


def _pil(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(out, fmt, **options)
    return out.getvalue()


def valid_files(rng: np.random.Generator) -> dict[str, bytes]:
    """One ordinary file per format and variant: the material the cuts and corruptions start from."""
    picture = _picture(rng)
    bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    return {
        "jpeg": cv2.imencode(".jpg", bgr)[1].tobytes(),
        "jpeg-progressive": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "png": cv2.imencode(".png", bgr)[1].tobytes(),
        "png-16bit": cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes(),
        "gif": _pil(picture, "GIF"),
        "bmp": cv2.imencode(".bmp", bgr)[1].tobytes(),
        "tiff": _pil(picture, "TIFF"),
        "tiff-lzw": _pil(picture, "TIFF", compression="tiff_lzw"),
        "webp": _pil(picture, "WEBP", quality=80),
        "webp-lossless": _pil(picture, "WEBP", lossless=True),
    }


def bombs() -> dict[str, bytes]:
    """Declared sizes far over any limit, some backed by real (compressed) pixel data."""
    return {
        "bomb-png-100000x100000": png(100_000, 100_000, raw=b""),
        "large-png-real-zeros-5000x5000": png(5000, 5000),
        "bomb-png-16bit-rgba-20000x20000": png(20_000, 20_000, 16, 6, raw=b""),
        "bomb-png-1x4294967295": png(1, 2**32 - 1, raw=b""),
        "bomb-jpeg-65535x65535": jpeg_header_only(65535, 65535),
        "bomb-jpeg-progressive-60000x60000": jpeg_header_only(60_000, 60_000, progressive=True),
        "bomb-gif-65535x65535": gif_screen(65535, 65535),
        "bomb-bmp-rle-50000x50000": bmp_rle8(50_000, 50_000),
        "bomb-bmp-top-down-50000x-50000": bmp_rle8(50_000, -50_000),
        "bomb-bmp-2147483647": bmp_rle8(2**31 - 1, 2),
        "bomb-webp-vp8x-16777216": webp_vp8x(2**24, 2**24),
        "bomb-webp-vp8x-99999": webp_vp8x(99_999, 99_999),
        "bomb-tiff-declared-4294967295": tiff(2**32 - 1, 2**32 - 1),
        "large-tiff-real-zeros-5000x5000": tiff(5000, 5000, zlib.compress(b"\0" * (3 * 5000 * 5000), 9), 8),
    }


def costly_but_allowed() -> dict[str, bytes]:
    """Within the pixel limit, large in work: the amplification files and their relatives."""
    return {
        "large-bmp-rle-6000x6000": amplification_bmp(),
        "large-jpeg-6000x6000-no-scan-data": amplification_jpeg(),
        "large-png-zeros-6000x6000": png(6000, 6000),
        "large-gif-screen-6000x6000": gif_screen(6000, 6000),
        "large-png-1x40000": png(40_000, 1),
        "large-png-40000x1": png(1, 40_000),
    }


def amplification_bmp() -> bytes:
    return bmp_rle8(6000, 6000)


def amplification_jpeg() -> bytes:
    return jpeg_header_only(6000, 6000)


def truncations(files: dict[str, bytes]) -> dict[str, bytes]:
    """Each valid file cut at 5 points; JPEGs and PNGs also with their end marker put back after the cut."""
    out: dict[str, bytes] = {}
    ends = {"jpeg": b"\xff\xd9", "png": _png_chunk(b"IEND", b""), "gif": b"\x3b"}
    for name, data in files.items():
        for keep in (0.02, 0.3, 0.6, 0.9, 0.99):
            cut = data[: max(1, int(len(data) * keep))]
            out[f"cut-{name}-{keep}"] = cut
            end = ends.get(name.split("-")[0])
            if end and keep >= 0.3:
                out[f"cut-{name}-{keep}-end-appended"] = cut + end
    return out


def depths_and_layouts(rng: np.random.Generator) -> dict[str, bytes]:
    """Valid but unusual: 16-bit, float, alpha, palettes, 1-bit, CMYK, EXIF rotation, animation."""
    picture = _picture(rng, 48)
    wide = rng.integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 8
    frames = [Image.fromarray(np.full((16, 16, 3), c, np.uint8)) for c in (0, 128, 255)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], loop=0)
    webp_animated = io.BytesIO()
    frames[0].save(webp_animated, "WEBP", save_all=True, append_images=frames[1:])
    return {
        "png-16bit-rgb": cv2.imencode(".png", wide)[1].tobytes(),
        "png-16bit-rgba": cv2.imencode(".png", np.dstack([wide, wide[..., :1]]))[1].tobytes(),
        "png-16bit-gray": cv2.imencode(".png", wide[..., 0])[1].tobytes(),
        "tiff-16bit-rgb": cv2.imencode(".tiff", wide)[1].tobytes(),
        "tiff-16bit-gray": cv2.imencode(".tiff", wide[..., 0])[1].tobytes(),
        "tiff-float32": cv2.imencode(".tiff", wide.astype(np.float32) / 65535)[1].tobytes(),
        "tiff-float32-gray": _pil(wide[..., 0].astype(np.float32), "TIFF"),
        "png-1bit": _pil(picture[..., 0] > 128, "PNG"),
        "png-palette-alpha": _pil(Image.fromarray(picture).convert("P"), "PNG", transparency=0),
        "png-gray-alpha": _pil(np.dstack([picture[..., 0], picture[..., 1]]), "PNG"),
        "jpeg-cmyk": _pil(Image.fromarray(picture).convert("CMYK"), "JPEG"),
        "jpeg-gray": _pil(picture[..., 0], "JPEG"),
        "jpeg-exif-rotated": _pil(picture, "JPEG", exif=exif.tobytes()),
        "gif-animated": animated.getvalue(),
        "webp-animated": webp_animated.getvalue(),
        "bmp-1x1": cv2.imencode(".bmp", picture[:1, :1])[1].tobytes(),
        "png-1x1": cv2.imencode(".png", picture[:1, :1])[1].tobytes(),
    }


def scans(files: dict[str, bytes]) -> dict[str, bytes]:
    """Progressive JPEGs with their last scan repeated: each scan re-reads every block."""
    data = files["jpeg-progressive"]
    last = data[data.rfind(b"\xff\xda") : -2]
    return {f"jpeg-progressive-{n}-scans": data[:-2] + last * n + data[-2:] for n in (20, 95, 150, 2000)}


def zero_and_odd_sizes() -> dict[str, bytes]:
    return {
        "empty": b"",
        "png-0x0": png(0, 0, raw=b""),
        "png-0x10": png(0, 10, raw=b""),
        "jpeg-0x0": jpeg_header_only(0, 0),
        "jpeg-10x0": jpeg_header_only(10, 0),
        "gif-0x0": gif_screen(0, 0),
        "bmp-0x0": bmp_rle8(0, 0),
        "webp-vp8x-1x1-no-data": webp_vp8x(1, 1),
        "tiff-0x0": tiff(0, 0),
        "tiff-no-strip": tiff(64, 64),
        **{f"magic-only-{n}": m for n, m in (("png", b"\x89PNG\r\n\x1a\n"), ("jpeg", b"\xff\xd8\xff"),
                                             ("gif", b"GIF89a"), ("bmp", b"BM"), ("tiff", b"II*\x00"),
                                             ("webp", b"RIFF\0\0\0\0WEBP"))},
    }


def corrupt_headers(files: dict[str, bytes], rng: np.random.Generator) -> dict[str, bytes]:
    """Invalid fields, self-referencing structures, bit flips in the first 64 bytes of every valid file."""
    out = {
        "png-bad-depth-7": png(16, 16, 7, 2, raw=b"\0" * 16),
        "png-bad-colour-type-5": png(16, 16, 8, 5, raw=b"\0" * 16),
        "png-palette-without-plte": png(16, 16, 8, 3),
        "png-bad-ihdr-crc": files["png"][:29] + b"\0\0\0\0" + files["png"][33:],
        "png-idat-not-zlib": png(8, 8)[:33] + _png_chunk(b"IDAT", b"not zlib at all") + _png_chunk(b"IEND", b""),
        "png-missing-iend": png(8, 8, iend=False),
        "png-too-few-rows": png(64, 64, raw=b"\0" * (1 + 64 * 3) * 10),
        "bmp-zero-bpp": files["bmp"][:28] + b"\0\0" + files["bmp"][30:],
        "bmp-bad-offset": files["bmp"][:10] + struct.pack("<I", 2**31) + files["bmp"][14:],
        "bmp-rle-runs-past-the-end": bmp_rle8(4, 4, b"\xff\x01" * 40 + b"\x00\x01"),
        "bmp-rle-delta-past-the-end": bmp_rle8(4, 4, b"\x00\x02\xff\xff\x01\x01\x00\x01"),
        "tiff-ifd-loop": b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 1) + struct.pack("<HHII", 256, 4, 1, 8)
                         + struct.pack("<I", 8),
        "tiff-strip-offset-beyond-file": tiff(16, 16, b"\0" * 10, extra=()),
        "tiff-deflate-garbage": tiff(32, 32, b"\x78\x9c" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)), 8),
        "tiff-bits-64": tiff(8, 8, b"\0" * 1536, bits=64),
        "gif-lzw-code-size-12": gif_screen(4, 4)[:-6] + b"\x0c\x02\x44\x01\x00\x3b",
        "gif-frame-outside-screen": gif_screen(4, 4, (400, 400)),
        "webp-chunk-size-huge": files["webp"][:16] + struct.pack("<I", 2**32 - 1) + files["webp"][20:],
        "webp-riff-size-zero": files["webp"][:4] + b"\0\0\0\0" + files["webp"][8:],
        "jpeg-sof-length-short": files["jpeg"].replace(b"\xff\xc0\x00\x11", b"\xff\xc0\x00\x05", 1),
        "jpeg-no-huffman-tables": jpeg_header_only(64, 64).replace(b"\xff\xc4", b"\xff\xe5", 1),
        "jpeg-12-bit": files["jpeg"].replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1),
        "jpeg-arithmetic-sof9": files["jpeg"].replace(b"\xff\xc0", b"\xff\xc9", 1),
        "jpeg-lossless-sof3": files["jpeg"].replace(b"\xff\xc0", b"\xff\xc3", 1),
    }
    for name, data in files.items():
        for i in range(3):
            flipped = bytearray(data)
            for position in rng.integers(2, min(64, len(data)), 4):
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            out[f"flipped-{name}-{i}"] = bytes(flipped)
    return out


def polyglots(files: dict[str, bytes]) -> dict[str, bytes]:
    html = b"<html><script>alert(1)</script></html>"
    zip_tail = b"PK\x03\x04" + b"\0" * 26 + b"PK\x05\x06" + b"\0" * 18
    return {
        "jpeg-then-zip": files["jpeg"] + zip_tail,
        "png-then-html": files["png"] + html,
        "gif-comment-script": files["gif"][:13] + b"\x21\xfe" + bytes([len(html)]) + html + b"\0" + files["gif"][13:],
        "png-magic-jpeg-body": b"\x89PNG\r\n\x1a\n" + files["jpeg"],
        "jpeg-magic-png-body": b"\xff\xd8\xff" + files["png"],
        "bmp-magic-png-body": b"BM" + files["png"],
        "pdf-after-png": files["png"] + b"%PDF-1.7\n",
        "png-after-pdf-header": b"%PDF-1.7\n" + files["png"],
        "html-then-png": html + files["png"],
        "two-jpegs": files["jpeg"] + files["jpeg"],
        "jpeg-comment-with-png": files["jpeg"][:2] + b"\xff\xfe" + struct.pack(">H", len(files["png"]) + 2)
                                 + files["png"] + files["jpeg"][2:],
        "webp-riff-avi": files["webp"][:8] + b"AVI " + files["webp"][12:],
    }


def non_images(rng: np.random.Generator) -> dict[str, bytes]:
    return {
        "pdf": b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "svg": b"<svg xmlns='http://www.w3.org/2000/svg' width='99999' height='99999'/>",
        "svg-xml-prolog": b"  <?xml version='1.0'?><svg/>",
        "ico": b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00" + b"\0" * 60,
        "zip": b"PK\x03\x04" + b"\0" * 60,
        "elf": b"\x7fELF" + b"\0" * 60,
        "html": b"<!doctype html><title>x</title>",
        "json": b'{"instances": []}',
        "utf16-bom": "\ufeffhello".encode("utf-16"),
        "random-4k": rng.bytes(4096),
        "zeros-4k": b"\0" * 4096,
        "ff-4k": b"\xff" * 4096,
    }


def corpus() -> dict[str, bytes]:
    """Every hostile file, by name."""
    rng = np.random.default_rng(RNG_SEED)
    files = valid_files(rng)
    return {**bombs(), **costly_but_allowed(), **truncations(files), **depths_and_layouts(rng), **scans(files),
            **zero_and_odd_sizes(), **corrupt_headers(files, rng), **polyglots(files), **non_images(rng)}


if __name__ == "__main__":
    everything = corpus()
    print(f"{len(everything)} files, {sum(map(len, everything.values())) / 1e6:.1f} MB")
