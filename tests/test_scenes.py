"""Scene-scale land cover with the committed EuroSAT model, on scenes assembled from test-split tiles.

A tile model reads ground at 10 m per pixel: an input larger than one tile must be resampled to that scale and tiled
(never squashed into one tile), giving a class per 640 m cell, a composition and one heat map for the whole scene.
"""

from __future__ import annotations

import cv2
import grpc
import httpx
import numpy as np
import pytest
from affine import Affine
from rasterio.io import MemoryFile

from gateway import scene
from gateway.decoding import probe
from tests.conftest import ROOT, encode
from tests.scenes import CLASSES, ORIGIN, UTM_33N, assemble, at_gsd, geotiff, per_tile_accuracy, random_blocks

JSON = {"Accept": "application/json"}
METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "layercam-fused")


@pytest.fixture(scope="module")
def every_tile():
    """All 160 test tiles once each, as a 10 x 16 tile scene (blocks of 2x2 same-class tiles)."""
    return assemble(random_blocks(5, 8, seed=0), seed=0)


def post(gateway, route: str, data: bytes, params=None, headers=None, name="scene.png") -> httpx.Response:
    return httpx.post(f"{gateway.url}{route}", files={"image": (name, data)}, params=params, headers=headers,
                      timeout=120)


def classmap(gateway, data: bytes, **params) -> dict:
    response = post(gateway, "/classmap", data, params, JSON)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("source", ["png-10m", "png-5m", "geotiff-10m", "geotiff-5m"])
def test_class_map_is_right_per_tile(eurosat_gateway, every_tile, source):
    image, truth = every_tile
    kind, gsd = source.split("-")
    gsd = float(gsd.rstrip("m"))
    pixels = at_gsd(image, gsd)
    if kind == "png":
        body = classmap(eurosat_gateway, encode(pixels), **({"gsd_m": gsd} if gsd != 10 else {}))
    else:
        body = classmap(eurosat_gateway, geotiff(pixels, gsd))  # the GSD comes from the geotransform
    assert (body["rows"], body["cols"]) == truth.shape
    assert body["cell_size_px"] == [64 * 10 / gsd] * 2 and body["gsd_m"] == pytest.approx(gsd)
    accuracy = per_tile_accuracy(np.array(body["classes"]), truth)
    assert accuracy >= 0.95, f"{source}: per-tile accuracy {accuracy:.3f}"
    assert np.isclose(sum(c["fraction"] for c in body["composition"]), 1.0)


def test_tiling_a_5m_image_without_its_gsd_is_wrong_and_with_it_right(eurosat_gateway, every_tile):
    """Why the GSD matters: at 5 m each 64 px tile sees a quarter of the ground the model was trained on."""
    image, truth = every_tile
    pixels = encode(at_gsd(image, 5))
    naive = classmap(eurosat_gateway, pixels)  # taken as 10 m: twice the rows and columns, a quarter of the ground each
    assert (naive["rows"], naive["cols"]) == (2 * truth.shape[0], 2 * truth.shape[1])
    assert per_tile_accuracy(np.array(naive["classes"]), truth) < 0.9
    assert per_tile_accuracy(np.array(classmap(eurosat_gateway, pixels, gsd_m=5)["classes"]), truth) >= 0.95


def test_geotiff_out_is_georeferenced_and_equals_the_json_map(eurosat_gateway, every_tile):
    image, _ = every_tile
    tiff = geotiff(at_gsd(image, 5), 5.0)
    as_json = classmap(eurosat_gateway, tiff)
    response = post(eurosat_gateway, "/classmap", tiff, headers={"Accept": "image/tiff"}, name="scene.tif")
    assert response.status_code == 200 and response.headers["content-type"] == "image/tiff"
    with MemoryFile(response.content) as memfile, memfile.open() as ds:
        assert ds.crs.to_string() == UTM_33N
        assert (ds.transform.c, ds.transform.f) == ORIGIN  # the input's origin
        assert (ds.transform.a, -ds.transform.e) == (5.0 * 128, 5.0 * 128)  # one cell (128 px at 5 m) per pixel
        assert (ds.height, ds.width) == (as_json["rows"], as_json["cols"]) and ds.dtypes[0] == "uint8"
        np.testing.assert_array_equal(ds.read(1), np.array(as_json["classes"]))
        np.testing.assert_allclose(ds.read(2) * ds.scales[1], np.array(as_json["confidence"]), atol=1 / 255)
        assert ds.descriptions[:2] == ("class", "confidence")
        assert ds.tags()["class_names"].startswith('["AnnualCrop"')


def test_predict_of_a_scene_ranks_its_composition(eurosat_gateway, every_tile):
    image, truth = every_tile
    crop, crop_truth = image[: 6 * 64, : 8 * 64], truth[:6, :8]
    body = post(eurosat_gateway, "/predict", encode(crop), {"top_k": 10}).json()
    scene = body["scene"]
    assert (scene["rows"], scene["cols"]) == crop_truth.shape
    true = np.bincount(crop_truth.ravel(), minlength=len(CLASSES)) / crop_truth.size
    got = np.zeros(len(CLASSES))
    for entry in scene["composition"]:
        got[entry["index"]] = entry["fraction"]
    assert 0.5 * np.abs(got - true).sum() <= 0.10
    ranked = {p["label"]: p["probability"] for p in body["predictions"]}
    assert pytest.approx(sum(ranked.values()), abs=1e-4) == 1.0  # the scene's distribution, not one tile's
    assert max(ranked, key=ranked.get) in {CLASSES[i] for i in np.flatnonzero(true == true.max())} | {
        CLASSES[int(np.argmax(got))]}


def test_models_show_how_a_version_reads_ground(eurosat_gateway):
    version = httpx.get(f"{eurosat_gateway.url}/v1/models").json()["models"][0]["versions"][0]
    assert version["input_kind"] == "tile" and version["gsd_m"] == 10.0
    properties = version["card"]["properties"]
    assert properties["gsd"] == 10.0 and properties["mlm:input"][0]["bands"] == ["red", "green", "blue"]
    assert properties["mlm:input"][0]["input"]["shape"] == [-1, 64, 64, 3]
    assert [c["name"] for c in properties["mlm:output"][0]["classification:classes"]] == CLASSES


def test_a_single_tile_answers_as_before(eurosat_gateway):
    tile = (ROOT / "tests" / "samples" / "Forest.jpg").read_bytes()
    body = post(eurosat_gateway, "/predict", tile).json()
    assert "scene" not in body and body["predictions"][0]["label"] == "Forest"
    one = classmap(eurosat_gateway, tile)
    assert (one["rows"], one["cols"]) == (1, 1) and one["classes"] == [[1]]


def test_partial_edge_tiles_are_kept_and_agree_with_the_model(eurosat_gateway, every_tile):
    """A 150 x 100 px scene is 3 x 2 cells; the last row and column are partial, read from windows flush with the
    edge, and each cell says exactly what /predict says of that window."""
    image, _ = every_tile
    scene = image[:150, :100]
    body = classmap(eurosat_gateway, encode(scene))
    assert (body["rows"], body["cols"]) == (3, 2)
    for row, y0 in enumerate((0, 64, 150 - 64)):
        for col, x0 in enumerate((0, 100 - 64)):
            tile = encode(scene[y0 : y0 + 64, x0 : x0 + 64])
            window = post(eurosat_gateway, "/predict", tile).json()["predictions"][0]
            assert body["classes"][row][col] == window["index"]
            assert body["confidence"][row][col] == pytest.approx(window["probability"], abs=1e-4)


@pytest.mark.parametrize(("method", "seamless"), [(m, s) for m in METHODS for s in (False, True)])
def test_scene_heat_map_stays_on_the_explained_class(eurosat_gateway, method, seamless):
    """4x4-tile scenes where the explained class covers one 2x2 block: the map's mass lies in those tiles, also when
    blended from windows that straddle the block's border (seamless)."""
    for seed, target in ((1, 0), (2, 3), (3, 1)):
        blocks = np.array([[target, (target + 1) % 10], [(target + 2) % 10, (target + 3) % 10]])
        blocks = np.roll(blocks, seed, axis=1)
        image, truth = assemble(blocks, seed=seed)
        response = post(eurosat_gateway, "/gradcam", encode(image),
                        {"class": CLASSES[target], "method": method, "seamless": str(seamless).lower()}, JSON)
        assert response.status_code == 200, response.text
        body = response.json()
        heat = np.array(body["heatmap"])
        assert heat.shape[0] >= 4 * 8 and heat.shape[1] >= 4 * 8  # at least 8x8 values per tile
        per_tile = heat.reshape(4, heat.shape[0] // 4, 4, heat.shape[1] // 4).sum(axis=(1, 3))
        inside = per_tile[truth == target].sum() / per_tile.sum()
        # blended, a window straddling the block's border lights its target half: about one CAM cell spills over
        assert inside >= (0.8 if seamless else 0.85), f"{method}: {inside:.3f} of the map inside the block"
        assert body["label"] == CLASSES[target] and (body["scene"]["rows"], body["scene"]["cols"]) == (4, 4)


def test_scene_heat_map_png_covers_the_scene(eurosat_gateway, every_tile):
    image, _ = every_tile
    response = post(eurosat_gateway, "/gradcam", encode(image[:256, :384]), {"rank": 2})
    assert response.status_code == 200 and response.headers["X-Class-Label"] in CLASSES
    overlay = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[1] / overlay.shape[0] == pytest.approx(384 / 256, abs=0.01)  # the whole scene


def test_class_map_png_in_the_palette(eurosat_gateway, every_tile):
    image, _ = every_tile
    plain = post(eurosat_gateway, "/classmap", encode(image[:128, :192]))
    assert plain.status_code == 200 and plain.headers["content-type"] == "image/png"
    painted = cv2.cvtColor(cv2.imdecode(np.frombuffer(plain.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert painted.shape[:2] == (128, 192)
    body = classmap(eurosat_gateway, encode(image[:128, :192]))
    colour = body["colors"][body["classes"][0][0]]
    assert tuple(painted[10, 10]) == tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    over = post(eurosat_gateway, "/classmap", encode(image[:128, :192]), {"overlay": "true"})
    assert over.status_code == 200 and over.content != plain.content


@pytest.mark.parametrize(("case", "status"), [
    ("corrupt", 400), ("two-bands", 415), ("float", 415), ("too-many-tiles", 413), ("contradicting-gsd", 422),
    ("negative-gsd", 422),
])
def test_bad_scenes_get_clear_errors(eurosat_gateway, case, status):
    params = {}
    if case == "corrupt":
        data = geotiff(np.zeros((64, 64, 3), np.uint8), 10.0)[:300]
    elif case in ("two-bands", "float"):
        with MemoryFile() as memfile:
            count, dtype = (2, "uint8") if case == "two-bands" else (3, "float32")
            with memfile.open(driver="GTiff", height=64, width=64, count=count, dtype=dtype, crs=UTM_33N,
                              transform=Affine(10, 0, 0, 0, -10, 0)) as ds:
                ds.write(np.zeros((count, 64, 64), dtype))
            data = memfile.read()
    elif case == "too-many-tiles":
        data = geotiff(np.zeros((64, 64, 3), np.uint8), 400.0)  # 25.6 km at 10 m: 1600 tiles
    elif case == "contradicting-gsd":
        data, params = geotiff(np.zeros((128, 128, 3), np.uint8), 10.0), {"gsd_m": 5}
    else:
        data, params = encode(np.zeros((128, 128, 3), np.uint8)), {"gsd_m": -5}
    response = post(eurosat_gateway, "/classmap", data, params, JSON, name="x.tif")
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    if case == "too-many-tiles":
        assert "python -m gateway scene" in message
    if case in ("two-bands", "float"):
        assert "accepted" in message


def test_grpc_class_map_equals_http(eurosat_gateway, every_tile):
    from gateway.protos import gateway_pb2, gateway_pb2_grpc

    image, _ = every_tile
    tiff = geotiff(image[:256, :320], 10.0)
    over_http = classmap(eurosat_gateway, tiff)
    with grpc.insecure_channel(f"127.0.0.1:{eurosat_gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        answer = stub.ClassMap(gateway_pb2.ClassMapRequest(image=tiff, geotiff=True), timeout=60)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ClassMap(gateway_pb2.ClassMapRequest(image=tiff, gsd_m=3), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (answer.scene.rows, answer.scene.cols) == (over_http["rows"], over_http["cols"])
    assert list(answer.classes) == [c for row in over_http["classes"] for c in row]
    assert [e.label for e in answer.scene.composition] == [e["label"] for e in over_http["composition"]]
    with MemoryFile(answer.geotiff) as memfile, memfile.open() as ds:
        np.testing.assert_array_equal(ds.read(1), np.array(over_http["classes"]))


def test_tf_serving_gives_the_same_scene_answers(eurosat_repo, eurosat_gateway, every_tile):
    """A 1024 x 1024 scene (256 tiles) through the TF Serving stand-in: split into several Predict calls, the same
    class map as the embedded backend, and the same heat map within 1e-3."""
    from tests.test_tfserving_backend import start_standin, tfserving_gateway

    image, _ = every_tile
    scene = np.vstack([image, image[: 1024 - image.shape[0]]])[:1024, :1024]
    data = encode(scene)
    local_map = classmap(eurosat_gateway, data)
    local_cam = post(eurosat_gateway, "/gradcam", data, {"class": "Forest"}, JSON).json()
    with start_standin(eurosat_repo) as standin, tfserving_gateway(
            eurosat_repo, standin.address, model_name="eurosat", max_body_bytes=50_000_000,
            request_timeout_s=120) as remote:
        remote_map = classmap(remote, data)
        remote_cam = post(remote, "/gradcam", data, {"class": "Forest"}, JSON)
        assert remote_cam.status_code == 200, remote_cam.text
        remote_cam = remote_cam.json()
        assert standin.calls[(1, "serving_default")] >= 256 // 32  # tiles in chunks, each message bounded
    assert remote_map["classes"] == local_map["classes"]
    np.testing.assert_allclose(remote_map["confidence"], local_map["confidence"], atol=1e-4)
    np.testing.assert_allclose(remote_cam["heatmap"], local_cam["heatmap"], atol=1e-3)



def grid_profile(heat: np.ndarray, per_tile: int = 8) -> np.ndarray:
    """Mean heat on each line of the tile period (0 = the first line of a tile), across the scene's inner tiles,
    relative to the mean: a tile-border grid shows as dim first and last lines."""
    inner = heat[per_tile:-per_tile, per_tile:-per_tile]
    phase = np.arange(inner.shape[0]) % per_tile
    rows, cols = inner.mean(axis=1), inner.mean(axis=0)
    profile = np.array([rows[phase == i].mean() + cols[phase == i].mean() for i in range(per_tile)])
    return profile / profile.mean()


@pytest.mark.parametrize("target", [0, 1, 5, 7])  # they fill their tiles: AnnualCrop, Forest, Pasture, Residential
def test_seamless_scene_heat_map_has_no_tile_border_grid(eurosat_gateway, target):
    """6x6 tiles of one class: explained tile by tile, each tile's last line of heat is about half the mean (a grid
    of dim lines across the scene); blended from half-overlapping windows, no line of the tile period is dim."""
    image, _ = assemble(np.full((3, 3), target), seed=target)
    profiles = {}
    for seamless in ("false", "true"):
        response = post(eurosat_gateway, "/gradcam", encode(image), {"class": CLASSES[target], "seamless": seamless},
                        JSON)
        assert response.status_code == 200, response.text
        heat = np.array(response.json()["heatmap"])
        assert heat.shape == (48, 48)  # the same map either way: 8 values per tile
        profiles[seamless] = grid_profile(heat)
    assert profiles["false"].min() < 0.65 and profiles["true"].min() > 0.8, profiles


def test_grpc_seamless_heat_map_equals_http(eurosat_gateway, every_tile):
    """Both doors take `seamless` into the one core: the same map, and a different one from the tiled map."""
    from gateway.protos import gateway_pb2, gateway_pb2_grpc

    image, _ = every_tile
    data = encode(image[:192, :320])
    over_http = {s: np.array(post(eurosat_gateway, "/gradcam", data, {"class": "Forest", "seamless": s},
                                  JSON).json()["heatmap"]) for s in ("true", "false")}
    with grpc.insecure_channel(f"127.0.0.1:{eurosat_gateway.grpc_port}") as channel:
        answer = gateway_pb2_grpc.GatewayStub(channel).GradCam(
            gateway_pb2.GradCamRequest(image=data, class_label="Forest", seamless=True), timeout=60)
    heat = np.array(answer.heatmap, np.float32).reshape(answer.heatmap_height, answer.heatmap_width)
    np.testing.assert_allclose(heat, over_http["true"], atol=1e-4)
    assert heat.shape == over_http["false"].shape and np.abs(heat - over_http["false"]).max() > 0.05


def test_a_seamless_scene_is_priced_for_its_windows(eurosat_gateway):
    """A 1,024-tile scene fits the default budget tiled; seamless it also runs 4,225 windows and is refused (413)
    before a pixel is decoded, saying what it costs, so one request cannot take 5x the work it was admitted for."""
    from gateway import admission

    data = encode(np.full((2048, 2048, 3), 90, np.uint8))
    refused = post(eurosat_gateway, "/gradcam", data, {"seamless": "true"}, JSON)
    assert refused.status_code == 413, refused.text
    windows = len(scene.BlendGrid((2048, 2048), (64, 64)))
    assert windows == 65 * 65
    header = probe(data, 40_000_000)
    tiled, seamless = (admission.request_cost([header], "gradcam", tiles) for tiles in (1024, 1024 + windows))
    assert f"{seamless:,} pixel-equivalents" in refused.json()["error"]["message"]
    assert tiled <= eurosat_gateway.app.state.core.settings.max_inflight_pixels < seamless


@pytest.mark.parametrize("size", [(64, 65), (130, 97), (40, 300), (1, 500), (256, 256)])
def test_blend_windows_sum_to_one_everywhere_and_read_the_mirrored_scene(size):
    """Every scene pixel gets total weight 1 from the windows (a constant map stays constant, to the edges, for
    thin and odd-sized scenes), and window (1, 1) is the scene's first tile."""
    blend = scene.BlendGrid(size, (64, 64))
    canvas = scene.BlendCanvas(blend, (8, 8))
    for row in range(blend.rows):
        for col in range(blend.cols):
            canvas.paint(row, col, np.ones((8, 8), np.float32))
    assert canvas.data.shape == scene.HeatmapCanvas(scene.Grid(size, (64, 64)), (8, 8)).data.shape
    np.testing.assert_allclose(canvas.data, 1.0, atol=1e-6)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)
    windows = blend.row_tiles(image[slice(*blend.strip(1))], 1)
    padded = np.pad(image, ((32, 96), (32, 96), (0, 0)), mode="reflect") if min(size) > 1 else None
    if padded is not None:
        np.testing.assert_array_equal(windows[2], padded[32:96, 64:128])
    if min(size) >= 64:
        np.testing.assert_array_equal(windows[1], image[:64, :64])


def test_an_odd_cam_grid_cannot_be_blended():
    with pytest.raises(ValueError, match="even"):
        scene.BlendCanvas(scene.BlendGrid((200, 200), (56, 56)), (7, 7))
