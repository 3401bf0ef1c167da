"""Hostile and unusual input against a real gateway (uvicorn, local backend): a right answer or a 4xx JSON error.

Never a 5xx, never a crash, never a partly decoded image, never a large allocation on a client's say-so.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.decoding import MAX_JPEG_SCANS
from tests.conftest import LiveServer, encode, gateway_settings, make_image, png_declaring

MAX_BODY = 1_000_000
MAX_PIXELS = 4_000_000
MB = 1024 * 1024
RNG = np.random.default_rng(6)
PICTURE = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # RGB; odd sizes catch swapped axes


@pytest.fixture(scope="module")
def server(models_repo):
    from gateway.app import create_app

    settings = gateway_settings(models_repo, max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS)
    with LiveServer(create_app(settings)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return int(next(x for x in status if x.startswith(field)).split()[1]) / 1024


def reset_peak_rss() -> float:
    """Resident memory now, with the peak (VmHWM) reset to it; this process also runs the gateway (a thread)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_mb("VmRSS:")


def peak_rss_growth(since: float) -> float:
    """How far resident memory peaked above `since`: catches a buffer that was allocated and freed again."""
    return _status_mb("VmHWM:") - since


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def post_image(client: httpx.Client, data: bytes, route: str = "/predict", **params) -> httpx.Response:
    return client.post(route, files={"image": ("upload", data, "application/octet-stream")}, params=params)


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def deflated_zeros(size: int) -> bytes:
    """zlib stream of `size` zero bytes, compressed a block at a time so the test never holds them all."""
    packer, block = zlib.compressobj(9), b"\0" * 65536
    out = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join([*out, packer.compress(b"\0" * (size % len(block))), packer.flush()])


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian RGB TIFF whose single deflate strip really holds width x height zero pixels."""
    strip = deflated_zeros(3 * width * height)
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2),
            (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(strip))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def jpeg_declaring(width: int, height: int) -> bytes:
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 64 + b"\xff\xd9"


BOMBS = {
    "png": png_declaring(100_000, 100_000),
    "png-real-zeros": png_declaring(3000, 3000, rows=3000),  # 27 MB of pixels in ~30 kB
    "jpeg": jpeg_declaring(60_000, 60_000),
    "tiff-real-zeros": tiff_declaring(5000, 5000),  # 75 MB of pixels in ~75 kB
    "gif": b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)  # one 1x1 frame on a 65535x65535 screen
           + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0x80) + b"\0" * 6 + b"\x02\x02\x44\x01\x00\x3b",
    "bmp": b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 50_000, -50_000, 1, 24,
                                                                   0, 0, 0, 0, 0, 0),
    "webp": b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4
            + (99_999).to_bytes(3, "little") * 2,
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_are_refused_before_allocating(client, name):
    data = BOMBS[name]
    assert len(data) < MAX_BODY / 10
    before = reset_peak_rss()
    message = error(post_image(client, data), 413, "payload_too_large")
    grown = peak_rss_growth(before)
    print(f"bomb {name} ({len(data)} bytes): peak RSS grew {grown:.1f} MB")
    assert "declares" in message and grown < 20


def test_empty_bodies(client):
    error(client.post("/predict"), 400, "invalid_image")
    error(client.post("/predict", content=b"", headers={"content-type": "application/json"}), 400, "bad_request")
    error(post_image(client, b""), 400, "invalid_image")
    error(client.post("/gradcam", content=b"", headers={"content-type": "multipart/form-data"}), 400, "bad_request")
    error(client.post("/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"}), 422,
          "invalid_parameter")


def test_wrong_field_names_and_part_counts(client):
    png = encode(PICTURE)
    assert "'image'" in error(client.post("/predict", files={"file": ("x.png", png)}), 422, "invalid_parameter")
    error(client.post("/predict", data={"image": "not a file"}, files={"other": ("x.png", png)}), 422,
          "invalid_parameter")
    error(client.post("/predict", files=[("image", ("a.png", png)), ("image", ("b.png", png))]), 400, "bad_request")
    error(client.post("/predict", files={"image": ("a.png", png)}, data={f"f{i}": "x" for i in range(40)}), 400,
          "bad_request")


@pytest.mark.parametrize("data", [b"\x00" * 100, b"hello world", RNG.bytes(5000), b"\x89PNG\r\n\x1a\n" + RNG.bytes(500),
                                  b"\xff\xd8\xff" + RNG.bytes(500), b"GIF89a" + RNG.bytes(500), b"BM" + RNG.bytes(60),
                                  b"II*\x00" + RNG.bytes(500), b"RIFF\0\0\0\0WEBP" + RNG.bytes(500)],
                         ids=["zeros", "text", "random", "png-magic", "jpeg-magic", "gif-magic", "bmp-magic",
                              "tiff-magic", "webp-magic"])
def test_non_image_bytes_are_refused(client, data):
    """400, or 413 when random bytes after a magic number happen to declare a huge size."""
    r = post_image(client, data)
    error(r, r.status_code, "payload_too_large" if r.status_code == 413 else "invalid_image")
    assert r.status_code in (400, 413)


def test_unsupported_types_are_415(client):
    for data in (b"%PDF-1.7\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"  <?xml version='1.0'?><svg/>"):
        error(post_image(client, data), 415, "unsupported_media_type")


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("keep", [0.25, 0.6, 0.95, -2])
def test_truncated_images_are_400_not_grey_padded(client, ext, keep):
    """Rule: a JPEG without an EOI after its scan, or a PNG without IEND, is truncated; some decoders would
    otherwise return the top of the image over a grey bottom, and the gateway would classify that."""
    smooth = cv2.GaussianBlur(make_image("circles", np.random.default_rng(1), size=128), (0, 0), 3)
    data = encode(smooth, ext)
    cut = data[:keep] if keep < 0 else data[: int(len(data) * keep)]
    assert "truncated" in error(post_image(client, cut), 400, "invalid_image")
    assert post_image(client, data).status_code == 200


def test_an_embedded_thumbnail_does_not_hide_truncation(client):
    """An APP segment carrying a whole small JPEG (its own SOF and EOI) in front of the real image: the size comes
    from the real SOF, and the thumbnail's EOI does not make a truncated file look complete."""
    thumbnail = encode(np.zeros((8, 8, 3), np.uint8), ".jpg")
    main = encode(cv2.GaussianBlur(make_image("stripes", np.random.default_rng(2), size=64), (0, 0), 2), ".jpg")
    data = main[:2] + b"\xff\xed" + struct.pack(">H", len(thumbnail) + 2) + thumbnail + main[2:]
    r = post_image(client, data, "/gradcam", alpha=0, max_side=64)
    assert r.status_code == 200, r.text
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    assert "truncated" in error(post_image(client, data[: len(data) - 200]), 400, "invalid_image")


def test_progressive_jpegs_decode_but_thousands_of_scans_are_refused(client):
    """Each scan of a progressive JPEG re-reads every block: repeating its last scan 2,000 times made OpenCV take
    4.3 s instead of 27 ms on a 1024x1024 tile here. Ordinary progressive files (about 10 scans) still decode."""
    picture = cv2.GaussianBlur(make_image("stripes", np.random.default_rng(3), size=64), (0, 0), 2)
    bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert 2 < data.count(b"\xff\xda") <= MAX_JPEG_SCANS
    assert post_image(client, data).status_code == 200
    last_scan = data[data.rfind(b"\xff\xda") : -2]
    hostile = data[:-2] + last_scan * 150 + data[-2:]
    assert "scans" in error(post_image(client, hostile), 400, "invalid_image")


def stream(total: int, sent: list[int], head: bytes = b"", tail: bytes = b"") -> Iterator[bytes]:
    """A chunked body of `total` bytes, counting in `sent` what the server actually pulled from us."""
    chunk = b"\0" * (256 * 1024)
    yield head
    while sent[0] < total:
        sent[0] += len(chunk)
        yield chunk
    yield tail


MULTIPART_HEAD = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n\x89PNG\r\n\x1a\n'
STREAMED = {  # name -> (content type, head, tail, query, expected status and code)
    "multipart": ("multipart/form-data; boundary=b", MULTIPART_HEAD, b"\r\n--b--\r\n", {}, 413, "payload_too_large"),
    "json": ("application/json", b'{"instances": [{"b64": "', b'"}]}', {}, 413, "payload_too_large"),
    "raw-png-refused-unread": ("image/png", b"", b"", {}, 415, "unsupported_media_type"),
    "bad-query-refused-unread": ("multipart/form-data; boundary=b", MULTIPART_HEAD, b"", {"top_k": 0}, 422,
                                 "invalid_parameter"),
}


@pytest.mark.parametrize("kind", list(STREAMED))
def test_100mb_streamed_body_is_stopped_at_the_limit(client, kind):
    """No Content-Length (chunked): the 413 comes from counting while streaming, not after buffering 100 MB; and
    a refusal sent before the body was read closes the connection instead of draining the other 100 MB."""
    content_type, head, tail, query, status, code = STREAMED[kind]
    sent = [0]
    before = reset_peak_rss()
    r = client.post("/predict", content=stream(100 * MB, sent, head, tail), params=query,
                    headers={"content-type": content_type})
    grown = peak_rss_growth(before)
    print(f"100 MB {kind}: server pulled {sent[0] / MB:.1f} MB, peak RSS grew {grown:.1f} MB")
    error(r, status, code)
    assert r.headers["connection"] == "close"
    assert sent[0] < 20 * MB and grown < 40


def test_declared_content_length_over_the_limit_is_413_at_once(client):
    error(post_image(client, b"\0" * (MAX_BODY + 1)), 413, "payload_too_large")


def rgba_picture() -> np.ndarray:
    alpha = np.zeros(PICTURE.shape[:2], np.uint8)
    alpha[:, 20:] = 255
    alpha[:, 10:20] = 128
    return np.dstack([PICTURE, alpha])


def composited_over_white() -> np.ndarray:
    alpha = rgba_picture()[..., 3:].astype(np.float32) / 255
    return (PICTURE * alpha + 255 * (1 - alpha)).round().astype(np.uint8)


def rgb_to_png_bgr(image: np.ndarray, ext: str = ".png", params: tuple = ()) -> bytes:
    channels = image.shape[2] if image.ndim == 3 else 1
    converted = {1: image, 3: cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 4: cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)}
    ok, data = cv2.imencode(ext, converted[channels], list(params))
    assert ok
    return data.tobytes()


def blocks() -> np.ndarray:
    """Flat 16x16 colour blocks, 8x8-aligned, so lossy codecs reproduce their insides closely."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [240, 200, 40], [20, 20, 20]], np.uint8)
    return np.repeat(np.repeat(colours[None], 16, axis=0), 16, axis=1)  # 16 x 80


def palette_png() -> tuple[bytes, np.ndarray]:
    image = Image.fromarray(PICTURE).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return pil_bytes(image, "PNG"), np.asarray(image.convert("RGB"))


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((24, 40, 3), c, np.uint8)) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated() -> bytes:
    """40 wide x 20 high, left half red, right half blue, EXIF Orientation 6 (display rotated 90 deg clockwise)."""
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)
    image[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return pil_bytes(Image.fromarray(image), "JPEG", exif=exif.tobytes(), quality=95)


def formats() -> dict[str, tuple[bytes, np.ndarray, int, int]]:
    """name -> (encoded bytes, the RGB image the gateway must see, tolerance per channel, margin kept off edges)."""
    gray = PICTURE[..., 1]
    palette, palette_rgb = palette_png()
    rotated = np.zeros((40, 20, 3), np.uint8)
    rotated[:20], rotated[20:] = (255, 0, 0), (0, 0, 255)
    cmyk = pil_bytes(Image.fromarray(blocks()).convert("CMYK"), "JPEG", quality=98)
    return {
        "png-16bit": (rgb_to_png_bgr(PICTURE.astype(np.uint16) * 257), PICTURE, 0, 0),
        "png-gray": (rgb_to_png_bgr(gray), np.dstack([gray] * 3), 0, 0),
        "png-palette": (palette, palette_rgb, 0, 0),
        "png-rgba": (rgb_to_png_bgr(rgba_picture()), composited_over_white(), 1, 0),
        "png-gray-alpha": (pil_bytes(Image.fromarray(rgba_picture()).convert("LA"), "PNG"),
                           np.asarray(Image.fromarray(composited_over_white()).convert("L").convert("RGB")), 2, 0),
        "jpeg-gray": (rgb_to_png_bgr(gray, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 100)), np.dstack([gray] * 3), 3, 0),
        "jpeg-cmyk": (cmyk, blocks(), 12, 0),
        "jpeg-exif-orientation-6": (exif_rotated(), rotated, 4, 4),  # the red half must end up on top
        "gif-animated": (animated_gif(), np.full((24, 40, 3), (255, 0, 0), np.uint8), 0, 0),
        "webp-lossless": (pil_bytes(Image.fromarray(PICTURE), "WEBP", lossless=True), PICTURE, 0, 0),
        "webp-lossy": (pil_bytes(Image.fromarray(blocks()), "WEBP", quality=100), blocks(), 6, 4),
        "tiff": (pil_bytes(Image.fromarray(PICTURE), "TIFF"), PICTURE, 0, 0),
        "tiff-lzw": (pil_bytes(Image.fromarray(PICTURE), "TIFF", compression="tiff_lzw"), PICTURE, 0, 0),
        "bmp": (rgb_to_png_bgr(PICTURE, ".bmp"), PICTURE, 0, 0),
        "bmp-pil-palette": (pil_bytes(Image.fromarray(PICTURE).convert("P"), "BMP"),
                            np.asarray(Image.fromarray(PICTURE).convert("P").convert("RGB")), 0, 0),
    }


FORMATS = formats()


def away_from_edges(image: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose whole neighbourhood is one colour: lossy codecs smear colour edges (chroma subsampling)."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return (cv2.erode(image, kernel) == cv2.dilate(image, kernel)).all(axis=2)


@pytest.mark.parametrize("name", list(FORMATS))
def test_formats_decode_to_the_right_rgb_pixels(client, name):
    """With alpha=0 and max_side at its own size the /gradcam PNG is exactly the decoded image, so pixels and
    orientation are checkable."""
    data, expected, tolerance, margin = FORMATS[name]
    r = post_image(client, data, "/gradcam", alpha=0, max_side=max(expected.shape[:2]))
    assert r.status_code == 200, r.text
    seen = cv2.cvtColor(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert seen.shape == expected.shape
    checked = away_from_edges(expected, margin) if margin else np.ones(expected.shape[:2], bool)
    assert checked.mean() > 0.3
    assert np.abs(seen.astype(int) - expected)[checked].max() <= tolerance


def test_every_format_in_one_json_batch(client):
    instances = [{"b64": base64.b64encode(data).decode()} for data, *_ in FORMATS.values()]
    r = client.post("/predict", json={"instances": instances[:16], "top_k": 1})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == min(16, len(instances))


@pytest.mark.parametrize("shape", [(1, 1), (1, 3000), (3000, 1), (2000, 2000)])
def test_extreme_but_allowed_shapes(client, shape):
    data = encode(np.full((*shape, 3), 90, np.uint8))
    assert post_image(client, data).status_code == 200
    r = post_image(client, data, "/gradcam", max_side=64)
    assert r.status_code == 200, r.text


def test_pixel_limit_applies_just_above_it(client):
    error(post_image(client, png_declaring(2001, 2000, rows=2000)), 413, "payload_too_large")


@pytest.mark.parametrize("top_k", ["0", "-1", "101", str(10**30), "1e3", "five", ""])
def test_bad_top_k_is_422(client, top_k):
    error(post_image(client, encode(PICTURE), top_k=top_k), 422, "invalid_parameter")


@pytest.mark.parametrize("top_k", [0, -1, 101, 10**30, 1e300, "five", [5]])
def test_bad_top_k_in_json_is_422(client, top_k):
    body = {"instances": [{"b64": base64.b64encode(encode(PICTURE)).decode()}], "top_k": top_k}
    error(client.post("/predict", json=body), 422, "invalid_parameter")


def test_top_k_above_the_class_count_is_capped(client):
    r = post_image(client, encode(PICTURE), top_k=100)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


@pytest.mark.parametrize("params", [{"method": "nope"}, {"method": "gradcam\x00"}, {"method": "ü" * 10},
                                    {"method": "x" * 33}, {"colormap": "rainbow"}, {"colormap": "TURBO "},
                                    {"colormap": "x" * 1000}, {"alpha": "nan"}, {"alpha": "-0.1"},
                                    {"max_side": 0}, {"rank": 0}, {"class": "-1"}, {"class": str(10**40)},
                                    {"class": "x" * 129}])
def test_bad_gradcam_options_are_422(client, params):
    error(post_image(client, encode(PICTURE), "/gradcam", **params), 422, "invalid_parameter")


@pytest.mark.parametrize("b64", ["***", "abc", "Y", "é", "YWJj\nZGVm", " " * 8])
def test_invalid_base64_is_400(client, b64):
    error(client.post("/predict", json={"instances": [{"b64": b64}]}), 400, "bad_request")


def test_valid_base64_of_garbage_is_400_invalid_image(client):
    error(client.post("/predict", json={"instances": [{"b64": base64.b64encode(b"garbage").decode()}]}), 400,
          "invalid_image")
    error(client.post("/predict", json={"instances": [{"b64": ""}]}), 400, "invalid_image")


def test_oversized_json_batches_are_422(client):
    one = {"b64": base64.b64encode(encode(PICTURE)).decode()}
    assert "limit is 32" in error(client.post("/predict", json={"instances": [one] * 33}), 422,
                                  "invalid_parameter")
    error(client.post("/gradcam", json={"instances": [one] * 2}), 422, "invalid_parameter")
    tiny = {"b64": "AA=="}
    error(client.post("/predict", json={"instances": [tiny] * 80_000}), 413, "payload_too_large")


@pytest.mark.parametrize("raw", [b"{", b'{"instances": [', b"{'instances': []}", b"nul", b"\xff\xfe{}",
                                 b'{"instances": [{"b64": "x"}]}}', b"[" * 100_000 + b"]" * 100_000])
def test_malformed_json_is_400(client, raw):
    assert "JSON" in error(client.post("/predict", content=raw, headers={"content-type": "application/json"}), 400,
                           "bad_request")


@pytest.mark.parametrize("body", [[], {}, "instances", None, 7, {"instances": {}}, {"instances": "x"},
                                  {"instances": [{}]}, {"instances": [{"b64": 5}]}, {"instances": [1]},
                                  {"instances": [{"b64": ["AA=="]}]}, {"instances": [{"b64": "AA=="}], "version": -1},
                                  {"instances": [{"b64": "AA=="}], "label": "../x"},
                                  {"instances": [{"b64": "AA=="}], "version": "latest"}])
def test_json_of_the_wrong_shape_is_422(client, body):
    r = client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    error(r, 422, "invalid_parameter")


@pytest.mark.parametrize("params", [{"model": "../../etc"}, {"model": ""}, {"model": "a/b"}, {"model": "x" * 65},
                                    {"model": "tiny\n"}, {"model": "%2e%2e"}, {"label": "../stable"},
                                    {"label": "stable;rm"}, {"version": -1}, {"version": 0}, {"version": "1.5"},
                                    {"version": "0x1"}, {"version": "1; drop"}])
@pytest.mark.parametrize("route", ["/predict", "/gradcam"])
def test_model_names_and_versions_are_validated(client, route, params):
    error(post_image(client, encode(PICTURE), route, **params), 422, "invalid_parameter")


@pytest.mark.parametrize("version", [2, 2**31, 2**63, 10**30])
def test_unserved_huge_versions_are_404(client, version):
    error(post_image(client, encode(PICTURE), version=version), 404, "not_found")


def test_oversized_headers_are_422(client):
    r = client.post("/predict", files={"image": ("x.png", encode(PICTURE))}, headers={"X-Routing-Key": "k" * 300})
    error(r, 422, "invalid_parameter")
    r = client.post("/predict", files={"image": ("x.png", encode(PICTURE))}, headers={"X-Request-ID": "r" * 200})
    error(r, 422, "invalid_parameter")


def test_odd_content_types(client):
    png = encode(PICTURE)
    error(client.post("/predict", content=png, headers={"content-type": "image/png"}), 415, "unsupported_media_type")
    error(client.post("/predict", content=png, headers={"content-type": "multipart/form-data; boundary="}), 400,
          "bad_request")
    error(client.post("/predict", content=b"\x00" * 1000, headers={"content-type": "multipart/form-data; boundary=b"}),
          400, "bad_request")


def test_still_healthy_afterwards_and_keeps_connections_alive(client):
    assert client.get("/healthz").json()["status"] == "ok"
    r = post_image(client, encode(PICTURE))
    assert r.status_code == 200 and r.headers.get("connection") != "close"
