"""The demo page: its endpoints (no browser), then the page itself in headless Debian Chromium over a live gateway
serving the committed EuroSAT model, with the gateway's strict Content-Security-Policy: sample tiles, and scenes
(PNG and GeoTIFF, assembled from test-split tiles) with their class map, legend, composition and heat maps."""

from __future__ import annotations

import base64
import os
import shutil
import warnings
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, SAMPLES, LiveServer, encode, gateway_settings
from tests.scenes import assemble, geotiff, random_blocks

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 90
needs_browser = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="no /usr/bin/chromium or /usr/bin/chromedriver: `apt-get install chromium chromium-driver` (make browser)",
)


# ------------------------------------------------------------------------------------------ endpoints, no browser


@pytest.fixture
def samples_dir(tmp_path) -> Path:
    """Two images, plus files the listing must ignore and one just outside the directory."""
    root = tmp_path / "samples"
    (root / "sub").mkdir(parents=True)
    (root / "Forest.jpg").write_bytes((SAMPLES / "Forest.jpg").read_bytes())
    (root / "tile.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "notes.txt").write_text("not a sample")
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "sub" / "deep.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    return root


def demo_client(tmp_path: Path, samples: Path):
    """The real app without its lifespan: the demo routes need no backend or model."""
    from gateway.app import create_app

    with warnings.catch_warnings():  # Starlette's TestClient warns, once, that it will move to httpx2
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(create_app(gateway_settings(tmp_path / "models", samples_dir=samples)))


def _not_found(response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


def test_samples_listing_has_only_images_in_the_dir(tmp_path, samples_dir):
    body = demo_client(tmp_path, samples_dir).get("/v1/samples").json()
    assert body == {"samples": [
        {"name": "Forest.jpg", "label": "Forest", "url": "/v1/samples/Forest.jpg"},
        {"name": "tile.png", "label": "tile", "url": "/v1/samples/tile.png"},
    ]}


def test_samples_listing_of_committed_tiles(tmp_path):
    client = demo_client(tmp_path, SAMPLES)
    names = [s["name"] for s in client.get("/v1/samples").json()["samples"]]
    assert names == sorted(p.name for p in SAMPLES.glob("*.jpg")) and len(names) == 10


def test_missing_samples_dir_is_an_empty_list(tmp_path):
    assert demo_client(tmp_path, tmp_path / "absent").get("/v1/samples").json() == {"samples": []}


def test_sample_bytes_and_content_type(tmp_path, samples_dir):
    client = demo_client(tmp_path, samples_dir)
    r = client.get("/v1/samples/Forest.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (SAMPLES / "Forest.jpg").read_bytes()
    assert client.get("/v1/samples/tile.png").headers["content-type"] == "image/png"


@pytest.mark.parametrize("name", ["..%2Fpyproject.toml", "..%2F..%2Fpyproject.toml", "..%2Fsecret.jpg", "%2E%2E",
                                  "notes.txt", ".hidden.jpg", "sub%2Fdeep.jpg", "sub", "Nope.jpg", "forest.jpg"])
def test_sample_names_outside_the_listing_are_404(tmp_path, samples_dir, name):
    _not_found(demo_client(tmp_path, samples_dir).get(f"/v1/samples/{name}"))


def test_methods_match_the_gradcam_options(tmp_path):
    from gateway.cam import DEFAULT_METHOD, METHODS
    from gateway.render import COLORMAPS, DEFAULT_COLORMAP

    body = demo_client(tmp_path, SAMPLES).get("/v1/methods").json()
    assert body == {"methods": list(METHODS), "colormaps": list(COLORMAPS), "default_method": DEFAULT_METHOD,
                    "default_colormap": DEFAULT_COLORMAP}


def test_page_and_assets(tmp_path):
    client = demo_client(tmp_path, SAMPLES)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-testid="predictions"' in page.text and "/static/app.js" in page.text
    assert "http" not in page.text.replace('href="/docs"', ""), "no external (CDN) references"
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for name in ("..%2Fapp.py", "index.html", "missing.js", "..%2F..%2Fpyproject.toml"):
        _not_found(client.get(f"/static/{name}"))
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/samples", "/v1/samples/{name}", "/v1/methods"} <= set(paths) and "/" not in paths


# ------------------------------------------------------------------------------------------ the page, in Chromium


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory):
    """The gateway as `make serve` runs it, on the committed eurosat version 1 (a 64 px, 10 m tile model; smaller and
    faster to load than the stable version, and the page does not depend on which version it shows)."""
    from gateway.app import create_app
    from gateway.backends.base import ModelConfig
    from gateway.model_config import ConfigStore

    repo = tmp_path_factory.mktemp("eurosat-repo")
    shutil.copytree(ROOT / "models" / "eurosat" / "1", repo / "eurosat" / "1")
    ConfigStore(repo, "/models").write([ModelConfig("eurosat", (1,), {"stable": 1})])
    with LiveServer(create_app(gateway_settings(repo, model_name="eurosat", samples_dir=SAMPLES))) as server:
        yield server


@pytest.fixture(scope="module")
def api(demo_gateway):
    with httpx.Client(base_url=demo_gateway.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations are console errors
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message)


def by_testid(driver, testid: str, many: bool = False):
    from selenium.webdriver.common.by import By

    find = driver.find_elements if many else driver.find_element
    return find(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def heatmap_shows(driver, label: str, **data: str) -> bool:
    """The heat-map <img> finished loading a PNG for `label` (and the given data-* values)."""
    img = by_testid(driver, "heatmap")
    loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
    return bool(loaded) and img.get_attribute("data-label") == label and \
        all(img.get_attribute(f"data-{k}") == v for k, v in data.items())


def assert_no_csp_violations(driver) -> None:
    """The page ran under the gateway's CSP (no inline script, handler or style attribute) without a violation."""
    logs = [e["message"] for e in driver.get_log("browser")]
    assert [m for m in logs if "Content Security Policy" in m] == [], logs


def open_sample(driver, demo_gateway, api) -> dict:
    """Load the page, click the first sample tile, wait for the API's own answer to that image; returns it."""
    driver.get(demo_gateway.url + "/")
    wait_for(driver, lambda d: by_testid(d, "sample", many=True), "no sample tiles")
    tile = by_testid(driver, "sample", many=True)[0]
    sample = api.get(f"/v1/samples/{tile.get_attribute('data-name')}").content
    expected = api.post("/predict", files={"image": ("s.jpg", sample, "image/jpeg")}, params={"top_k": 5}).json()
    tile.click()
    labels = [p["label"] for p in expected["predictions"]]
    wait_for(driver, lambda d: [r.get_attribute("data-label") for r in by_testid(d, "prediction-row", many=True)]
             == labels, f"prediction rows never became {labels}")
    wait_for(driver, lambda d: heatmap_shows(d, labels[0]), "no heat map for the top class")
    return expected


@needs_browser
def test_sample_shows_ranked_classes_bars_heatmap_and_version(browser, demo_gateway, api):
    expected = open_sample(browser, demo_gateway, api)
    rows = by_testid(browser, "prediction-row", many=True)
    assert len(rows) == len(expected["predictions"]) == 5
    bars = [float(b.get_attribute("style").split("width:")[1].split("%")[0]) for b in
            by_testid(browser, "prediction-bar", many=True)]
    assert bars == sorted(bars, reverse=True) and bars[0] > 0 and len(bars) == len(rows)
    assert rows[0].get_attribute("aria-pressed") == "true"
    assert all(r.get_attribute("aria-pressed") == "false" for r in rows[1:])
    assert by_testid(browser, "preview").get_attribute("alt")
    assert by_testid(browser, "heatmap").get_attribute("alt")
    version = str(expected["version"])
    assert by_testid(browser, "prediction-version").get_attribute("data-version") == version
    assert by_testid(browser, "heatmap-version").get_attribute("data-version") == version
    assert f"version {version} (stable)" in by_testid(browser, "prediction-version").text
    assert by_testid(browser, "error").is_displayed() is False
    assert by_testid(browser, "preview").get_attribute("data-kind") == "image"
    assert not by_testid(browser, "scene").is_displayed()
    assert not by_testid(browser, "seamless").is_displayed()  # a single tile has no tile borders to blend
    assert_no_csp_violations(browser)


@needs_browser
def test_selecting_other_classes_updates_the_heatmap(browser, demo_gateway, api):
    from selenium.webdriver.common.keys import Keys

    labels = [p["label"] for p in open_sample(browser, demo_gateway, api)["predictions"]]
    rows = by_testid(browser, "prediction-row", many=True)
    rows[1].click()
    wait_for(browser, lambda d: heatmap_shows(d, labels[1]), "the heat map did not switch to the 2nd class")
    assert labels[1] in by_testid(browser, "heatmap-caption").text
    assert [r.get_attribute("aria-pressed") for r in rows] == ["false", "true", "false", "false", "false"]
    rows[1].send_keys(Keys.ARROW_DOWN)  # keyboard: move to the 3rd class and press it
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: heatmap_shows(d, labels[2]), "the keyboard did not select the 3rd class")


@needs_browser
def test_method_and_opacity_re_request_the_heatmap(browser, demo_gateway, api):
    from selenium.webdriver.support.ui import Select

    top = open_sample(browser, demo_gateway, api)["predictions"][0]["label"]
    methods = api.get("/v1/methods").json()
    select = Select(by_testid(browser, "method"))
    assert [o.get_attribute("value") for o in select.options] == methods["methods"]
    assert select.first_selected_option.get_attribute("value") == methods["default_method"]
    other = next(m for m in methods["methods"] if m != methods["default_method"])
    select.select_by_value(other)
    wait_for(browser, lambda d: heatmap_shows(d, top, method=other), f"no heat map by {other}")
    assert other in by_testid(browser, "heatmap-caption").text
    browser.execute_script("const s = arguments[0]; s.value = '0.8'; s.dispatchEvent(new Event('input'));",
                           by_testid(browser, "alpha"))
    wait_for(browser, lambda d: heatmap_shows(d, top, method=other, alpha="0.8"), "opacity did not re-request")


@needs_browser
def test_non_image_upload_explains_the_error(browser, demo_gateway, api, tmp_path):
    open_sample(browser, demo_gateway, api)
    note = tmp_path / "notes.txt"
    note.write_text("this is not an image\n")
    answer = api.post("/predict", files={"image": ("notes.txt", note.read_bytes(), "text/plain")}).json()["error"]
    assert answer["code"] == "invalid_image"
    by_testid(browser, "file-input").send_keys(str(note))
    wait_for(browser, lambda d: by_testid(d, "error").is_displayed(), "no error shown")
    assert by_testid(browser, "error").get_attribute("data-code") == "invalid_image"
    title = by_testid(browser, "error-title").text
    assert "not an image" in title and "invalid_image" not in title
    assert answer["message"] in by_testid(browser, "error-detail").text
    assert by_testid(browser, "prediction-row", many=True) == []
    assert not by_testid(browser, "heatmap").is_displayed()


# ------------------------------------------------------------------------------------------ scenes, in Chromium

JSON = {"Accept": "application/json"}
SCENE_SEED = 3


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> dict[str, Path]:
    """One 8x8-tile scene (512 px at 10 m, 2x2 blocks of same-class test-split tiles) as PNG and as GeoTIFF."""
    image, _ = assemble(random_blocks(4, 4, SCENE_SEED), SCENE_SEED)
    root = tmp_path_factory.mktemp("scenes")
    (root / "scene.png").write_bytes(encode(image))
    (root / "scene.tif").write_bytes(geotiff(image, 10.0))
    return {"png": root / "scene.png", "geotiff": root / "scene.tif"}


def api_post(api, route: str, path: Path, params=None, headers=None) -> httpx.Response:
    response = api.post(route, files={"image": (path.name, path.read_bytes())}, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response


def upload(driver, demo_gateway, path: Path, gsd: str = "") -> None:
    """Open the page, type a ground resolution (optional), choose the file as a user would."""
    driver.get(demo_gateway.url + "/")
    wait_for(driver, lambda d: by_testid(d, "method").get_attribute("value"), "the CAM methods never loaded")
    if gsd:
        by_testid(driver, "gsd").send_keys(gsd)
    by_testid(driver, "file-input").send_keys(str(path))


def shown_composition(driver) -> list[tuple[str, int, float, float]]:
    """(label, index, share shown in %, bar width in %) per composition row, top to bottom."""
    from selenium.webdriver.common.by import By

    rows = []
    for row in by_testid(driver, "composition-row", many=True):
        bar = row.find_element(By.CSS_SELECTOR, '[data-testid="composition-bar"]').get_attribute("style")
        rows.append((row.get_attribute("data-label"), int(row.get_attribute("data-index")),
                     float(row.find_element(By.CSS_SELECTOR, ".pct").text.rstrip("%")),
                     float(bar.split("width:")[1].split("%")[0])))
    return rows


def wait_for_composition(driver, expected: dict) -> list[tuple[str, int, float, float]]:
    """Wait until the page lists the API's composition (same classes, same order); returns what it shows."""
    labels = [c["label"] for c in expected["composition"]]
    wait_for(driver, lambda d: [r.get_attribute("data-label") for r in by_testid(d, "composition-row", many=True)]
             == labels, f"the composition never became {labels}")
    return shown_composition(driver)


def pressed(driver, testid: str) -> list[str]:
    return [e.get_attribute("data-label") for e in by_testid(driver, testid, many=True)
            if e.get_attribute("aria-pressed") == "true"]


def natural_size(driver, testid: str) -> tuple[int, int]:
    return tuple(driver.execute_script("const i = arguments[0]; return [i.naturalWidth, i.naturalHeight];",
                                       by_testid(driver, testid)))


@needs_browser
@pytest.mark.parametrize("kind", ["png", "geotiff"])
def test_scene_shows_class_map_legend_composition_and_heat_maps(browser, demo_gateway, api, scene_files, kind):
    import cv2
    import numpy as np

    path = scene_files[kind]
    expected = api_post(api, "/classmap", path, headers=JSON).json()
    assert (expected["rows"], expected["cols"]) == (8, 8) and len(expected["composition"]) >= 2
    upload(browser, demo_gateway, path)

    shown = wait_for_composition(browser, expected)
    assert [(label, index) for label, index, _, _ in shown] == \
        [(c["label"], c["index"]) for c in expected["composition"]]
    for (_, _, share, bar), entry in zip(shown, expected["composition"], strict=True):
        assert share == pytest.approx(entry["fraction"] * 100, abs=0.05) and bar == pytest.approx(share, abs=0.05)
    assert by_testid(browser, "classes-title").text == "3. Land cover"
    assert not by_testid(browser, "predictions").is_displayed()
    assert "8 × 8 cells of 64 × 64 px (640 m of ground) at 10 m per pixel" in by_testid(browser, "scene-summary").text

    items = by_testid(browser, "legend-item", many=True)
    assert [i.get_attribute("data-label") for i in items] == expected["class_names"]
    assert [i.text for i in items] == expected["class_names"]
    swatches = browser.execute_script("return [...document.querySelectorAll('[data-testid=legend-item] .swatch')]"
                                      ".map((s) => getComputedStyle(s).backgroundColor);")
    assert swatches == [f"rgb({int(c[1:3], 16)}, {int(c[3:5], 16)}, {int(c[5:7], 16)})" for c in expected["colors"]]
    present = {c["label"] for c in expected["composition"]}
    assert {i.get_attribute("data-label") for i in items if "absent" in i.get_attribute("class").split()} == \
        set(expected["class_names"]) - present

    # The image is the gateway's class-map overlay (a browser cannot show a TIFF), at the scene's shape.
    assert by_testid(browser, "preview").get_attribute("data-kind") == "classmap"
    width, height = natural_size(browser, "preview")
    assert width == height >= 256

    # The largest class's scene heat map first; then a click on the legend explains another class.
    first, second = expected["composition"][0], expected["composition"][1]
    wait_for(browser, lambda d: heatmap_shows(d, first["label"]), "no heat map for the largest class")
    assert pressed(browser, "composition-row") == [first["label"]] == pressed(browser, "legend-item")
    legend = next(i for i in items if i.get_attribute("data-label") == second["label"])
    legend.click()
    wait_for(browser, lambda d: heatmap_shows(d, second["label"]), "the legend did not switch the heat map")
    assert pressed(browser, "composition-row") == [second["label"]] == pressed(browser, "legend-item")
    caption = by_testid(browser, "heatmap-caption").text
    assert second["label"] in caption and "mean probability" in caption
    assert by_testid(browser, "heatmap").get_attribute("data-seamless") == "false"
    by_testid(browser, "seamless").click()  # a scene offers the seamless map; the same class, blended
    wait_for(browser, lambda d: heatmap_shows(d, second["label"], seamless="true"), "seamless did not re-request")
    assert by_testid(browser, "heatmap-caption").text.endswith("· seamless")
    heat = api_post(api, "/gradcam", path, {"class": second["index"], "version": expected["version"]}, JSON).json()
    assert (heat["scene"]["rows"], heat["scene"]["cols"]) == (8, 8)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(heat["png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert natural_size(browser, "heatmap") == (png.shape[1], png.shape[0])  # the API's whole-scene heat map
    assert by_testid(browser, "error").is_displayed() is False
    assert_no_csp_violations(browser)
    if kind == "png" and os.environ.get("SAVE_DEMO_SCREENSHOT") == "1":
        save_screenshot(browser)


def save_screenshot(driver) -> None:
    """docs/demo.png: the whole page, as wide as the default window and as tall as its content."""
    size = "return [window.innerHeight, document.documentElement.scrollHeight];"
    inner, content = driver.execute_script(size)
    driver.set_window_size(1280, 1000 + content - inner + 20)  # the window is taller than its viewport
    try:
        assert driver.save_screenshot(str(ROOT / "docs" / "demo.png"))
    finally:
        driver.set_window_size(1280, 1000)


@needs_browser
def test_ground_resolution_field_rescales_the_scene_and_bad_values_are_explained(browser, demo_gateway, api,
                                                                                  scene_files):
    from selenium.webdriver.common.keys import Keys

    path = scene_files["png"]
    expected = api_post(api, "/classmap", path, {"gsd_m": 5}, JSON).json()
    assert (expected["rows"], expected["cols"]) == (4, 4)  # 512 px at 5 m: 2560 m, four 640 m cells a side
    upload(browser, demo_gateway, path, gsd="5")
    wait_for_composition(browser, expected)
    assert "4 × 4 cells of 128 × 128 px (640 m of ground) at 5 m per pixel" in \
        by_testid(browser, "scene-summary").text
    wait_for(browser, lambda d: heatmap_shows(d, expected["composition"][0]["label"]), "no heat map at 5 m")

    answer = api.post("/classmap", files={"image": (path.name, path.read_bytes())}, params={"gsd_m": "-5"}).json()
    field = by_testid(browser, "gsd")
    field.send_keys(Keys.BACKSPACE, "-5", Keys.TAB)  # a changed value re-reads the image at that resolution
    wait_for(browser, lambda d: by_testid(d, "error").is_displayed(), "no error for a negative resolution")
    assert by_testid(browser, "error").get_attribute("data-code") == answer["error"]["code"] == "invalid_parameter"
    assert answer["error"]["message"] in by_testid(browser, "error-detail").text
    assert by_testid(browser, "composition-row", many=True) == [] and not by_testid(browser, "heatmap").is_displayed()


@needs_browser
def test_geotiff_tile_is_shown_as_the_gateway_renders_it(browser, demo_gateway, api, tmp_path):
    """One 64 px tile as a GeoTIFF: ranked classes as for any tile, and a visible image although it is a TIFF."""
    import cv2

    tile = cv2.cvtColor(cv2.imread(str(SAMPLES / "River.jpg")), cv2.COLOR_BGR2RGB)
    path = tmp_path / "river.tif"
    path.write_bytes(geotiff(tile, 10.0))
    labels = [p["label"] for p in api_post(api, "/predict", path).json()["predictions"]]
    upload(browser, demo_gateway, path)
    wait_for(browser, lambda d: [r.get_attribute("data-label") for r in by_testid(d, "prediction-row", many=True)]
             == labels, f"prediction rows never became {labels}")
    wait_for(browser, lambda d: heatmap_shows(d, labels[0]), "no heat map for the top class")
    assert by_testid(browser, "preview").get_attribute("data-kind") == "image"
    assert natural_size(browser, "preview")[0] > 0  # a TIFF blob would not decode: this is the gateway's PNG
    assert not by_testid(browser, "scene").is_displayed()
    assert_no_csp_violations(browser)


def test_page_is_served_with_the_strict_csp(tmp_path):
    """The browser tests above ran under this policy; the page must not need anything looser."""
    policy = demo_client(tmp_path, SAMPLES).get("/").headers.get("content-security-policy", "")
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives.get("script-src") == "'self'" and directives.get("style-src") == "'self'", policy
