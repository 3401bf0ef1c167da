"""`python -m gateway scene`: a raster of any size to a georeferenced class map, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from affine import Affine
from rasterio.io import MemoryFile

from tests.conftest import ROOT, free_port
from tests.scenes import ORIGIN, UTM_33N, assemble, at_gsd, geotiff, per_tile_accuracy, random_blocks
from tests.test_scenes import classmap, post


def run_scene(repo, *args, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GATEWAY_MODELS_DIR": str(repo), "GATEWAY_MODEL_NAME": "eurosat", **env}
    return subprocess.run([sys.executable, "-m", "gateway", "scene", *map(str, args)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    """A 5 m GeoTIFF of a 12 x 16 tile scene (the command resamples it to 10 m), and the true class per tile."""
    image, truth = assemble(random_blocks(6, 8, seed=4), seed=4)
    path = tmp_path_factory.mktemp("in") / "scene.tif"
    path.write_bytes(geotiff(at_gsd(image, 5), 5.0))
    return path, truth


def test_maps_a_raster_with_probabilities_heat_map_and_summary(eurosat_repo, eurosat_gateway, raster, tmp_path):
    source, truth = raster
    out = tmp_path / "landcover.tif"
    done = run_scene(eurosat_repo, source, out, "--probabilities", "--explain", "Forest", "--batch", "40")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["tiles"] == truth.size
    assert "tile/s" in done.stderr  # the progress bar
    with MemoryFile(out.read_bytes()) as memfile, memfile.open() as ds:
        assert ds.crs.to_string() == UTM_33N and (ds.transform.c, ds.transform.f) == ORIGIN
        assert (ds.transform.a, -ds.transform.e) == (640.0, 640.0)  # one 10 m tile (128 px at 5 m) per pixel
        assert ds.count == 2 + 10 and ds.descriptions[2] == "probability:AnnualCrop"
        assert ds.tags()["class_names"].startswith('["AnnualCrop"')
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = ds.read(1)
        probabilities = ds.read()[2:] * ds.scales[2]
    assert per_tile_accuracy(classes, truth) >= 0.95
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=0))
    # the same tiles as POST /classmap: one scene module
    assert classes.tolist() == classmap(eurosat_gateway, source.read_bytes())["classes"]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["version"] == 1 and summary["input_gsd_m"] == [5.0, 5.0] and summary["tiles"] == truth.size
    assert summary["area_km2"] == pytest.approx(truth.size * 0.64 * 0.64)
    assert sum(summary["area_km2_per_class"].values()) == pytest.approx(summary["area_km2"], rel=1e-3)
    with MemoryFile(out.with_name("landcover.heatmap.tif").read_bytes()) as memfile, memfile.open() as ds:
        heat = ds.read(1)
        assert ds.crs.to_string() == UTM_33N and ds.transform.a == 80.0  # 8 values per 640 m tile
    forest = np.kron(truth == 1, np.ones((8, 8), bool))
    assert heat[forest].sum() / heat.sum() >= 0.85


def test_seamless_heat_map_is_the_one_post_gradcam_draws(eurosat_repo, eurosat_gateway, raster, tmp_path):
    """--seamless streams the heat map's half-overlapping windows from the raster row by row; the map is the one
    `POST /gradcam?seamless=true` blends from the whole scene in memory (one scene module), georeferenced like the
    tiled one, and the class map is unchanged."""
    source, _ = raster
    out = tmp_path / "landcover.tif"
    done = run_scene(eurosat_repo, source, out, "--explain", "Forest", "--seamless", "--batch", "50")
    assert done.returncode == 0, done.stderr
    with MemoryFile(out.read_bytes()) as memfile, memfile.open() as ds:
        assert ds.read(1).tolist() == classmap(eurosat_gateway, source.read_bytes())["classes"]
    with MemoryFile(out.with_name("landcover.heatmap.tif").read_bytes()) as memfile, memfile.open() as ds:
        heat = ds.read(1)
        assert ds.crs.to_string() == UTM_33N and ds.transform.a == 80.0 and heat.shape == (8 * 12, 8 * 16)
    response = post(eurosat_gateway, "/gradcam", source.read_bytes(), {"class": "Forest", "seamless": "true"},
                    {"Accept": "application/json"}, name="scene.tif")
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(heat, np.array(response.json()["heatmap"]), atol=2e-3)


@pytest.mark.parametrize(("case", "needle"), [
    ("exists", "--overwrite"), ("no-georeferencing", "--gsd-m"), ("two-bands", "accepted"),
    ("bad-class", "--explain"), ("missing", "does not exist"), ("seamless-alone", "--explain"),
])
def test_refusals_are_one_line_and_write_nothing(eurosat_repo, raster, tmp_path, case, needle):
    source, _ = raster
    out = tmp_path / "out.tif"
    args = [source, out]
    if case == "exists":
        out.write_bytes(b"keep me")
    elif case == "no-georeferencing":
        import cv2

        plain = tmp_path / "plain.tif"
        cv2.imwrite(str(plain), np.zeros((200, 200, 3), np.uint8))
        args = [plain, out]
    elif case == "two-bands":
        two = tmp_path / "two.tif"
        with MemoryFile() as memfile:
            with memfile.open(driver="GTiff", height=64, width=64, count=2, dtype="uint8", crs=UTM_33N,
                              transform=Affine(10, 0, 0, 0, -10, 0)) as ds:
                ds.write(np.zeros((2, 64, 64), np.uint8))
            two.write_bytes(memfile.read())
        args = [two, out]
    elif case == "bad-class":
        args += ["--explain", "Glacier"]
    elif case == "seamless-alone":
        args += ["--seamless"]
    else:
        args = [tmp_path / "nope.tif", out]
    done = run_scene(eurosat_repo, *args)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert (out.read_bytes() == b"keep me") if case == "exists" else not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_backend_outage_retries_then_stops_saying_where(eurosat_repo, raster, tmp_path):
    source, _ = raster
    out = tmp_path / "out.tif"
    done = run_scene(eurosat_repo, source, out, "--retries", "2", GATEWAY_BACKEND="tfserving",
                     GATEWAY_TFSERVING_ADDRESS=f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.count("retry") >= 2 and "stopped at tiles 0-" in done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
