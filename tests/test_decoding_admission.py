"""Admission by cost: a request's cost from its headers, the budget of work in flight (413 above it, 503 with
Retry-After past it, never a queue), and the rate learnt from served requests so that work that could only time out
is refused at the door."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest

from gateway import admission
from gateway.admission import WorkBudget, request_cost
from gateway.decoding import ImageHeader
from gateway.errors import Overloaded, PayloadTooLarge
from tests.conftest import LiveServer, gateway_settings

JPEG_TILE = ImageHeader("jpeg", 64, 64)


def test_cost_grows_with_pixels_format_tiles_and_method():
    tile = request_cost([JPEG_TILE])
    assert tile == 64 * 64 + admission.TILE_COST
    assert request_cost([ImageHeader("png", 64, 64)]) > tile  # PNG decodes slower than JPEG
    assert request_cost([JPEG_TILE] * 32) == 32 * tile
    assert request_cost([JPEG_TILE], tiles=100) == 64 * 64 + 100 * admission.TILE_COST
    single, fused = request_cost([JPEG_TILE], "gradcam"), request_cost([JPEG_TILE], "layercam-fused")
    assert tile < single < fused


def test_the_budget_refuses_at_once_and_frees_what_finishes():
    budget = WorkBudget(capacity=10_000_000)
    budget.take(6_000_000)
    with pytest.raises(Overloaded) as busy:
        budget.take(6_000_000)
    assert busy.value.retry_after >= 1 and busy.value.http_status == 503
    with pytest.raises(PayloadTooLarge):  # could never run: 413, not 503
        budget.take(10_000_001)
    budget.give_back(6_000_000)
    budget.take(6_000_000)
    assert budget.in_flight == 6_000_000


@pytest.fixture
def idle(monkeypatch):
    """A machine whose load average says nothing, so only what the budget learns counts."""
    monkeypatch.setattr(admission.os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def test_the_load_average_is_a_floor_for_the_estimate(monkeypatch):
    budget = WorkBudget(capacity=10**9, deadline_s=10)
    monkeypatch.setattr(admission.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    idle_s = budget.estimate_s(100_000_000)
    monkeypatch.setattr(admission.os, "getloadavg", lambda: (8.0 * admission.CORES, 0.0, 0.0))
    assert budget.estimate_s(100_000_000) == pytest.approx(idle_s * 8 * admission.LOAD_SLOWDOWN)


def test_a_slow_spell_refuses_large_work_then_wears_off(monkeypatch, idle):
    clock = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    budget = WorkBudget(capacity=10**9, deadline_s=10)
    large = 500_000_000  # 3.5 s at the idle rate
    budget.take(large)
    budget.give_back(large, elapsed_s=10.2)  # timed out: the machine is far slower than idle now
    with pytest.raises(Overloaded) as busy:
        budget.take(large)
    assert "deadline" in busy.value.message
    budget.take(admission.LEARN_FROM - 1)  # small work is never refused on the estimate
    clock[0] += 10 * admission.HALF_LIFE_S
    budget.take(large)  # the estimate decayed back towards the idle rate


def test_the_estimate_holds_on_a_host_up_for_months(monkeypatch, idle):
    """CI failed on a host up 13 h: the budget's clock started from the real uptime while the test's clock read
    1,000 s, and the decay over the negative interval overflowed. Neither order of clock readings may break it."""
    clock = [1e7]  # 116 days
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    budget = WorkBudget(capacity=10**9, deadline_s=10)
    clock[0] = 1000.0
    assert budget.estimate_s(100_000_000) == pytest.approx(100_000_000 * admission.IDLE_SECONDS_PER_UNIT)
    clock[0] = 1e12
    assert budget.estimate_s(100_000_000) == pytest.approx(100_000_000 * admission.IDLE_SECONDS_PER_UNIT)


def noise_png(side: int) -> bytes:
    return cv2.imencode(".png", np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))[1]


@pytest.fixture(scope="module")
def small_budget(models_repo):
    """The tiny model behind a budget that fits one 1000x1000 PNG (7 M pixel-equivalents) at a time."""
    from gateway.app import create_app

    settings = gateway_settings(models_repo, max_inflight_pixels=10_000_000, max_body_bytes=20_000_000)
    with LiveServer(create_app(settings)) as s, httpx.Client(base_url=s.url, timeout=60) as client:
        yield client


def post(client: httpx.Client, data: bytes) -> httpx.Response:
    return client.post("/predict", files={"image": ("x", bytes(data), "application/octet-stream")})


def test_a_request_over_the_whole_budget_is_413_before_decoding(small_budget):
    started = time.perf_counter()
    r = post(small_budget, noise_png(1300))  # 1.7 M pixels x 7 for PNG: more than all of the budget
    assert r.status_code == 413 and "pixel-equivalents" in r.json()["error"]["message"]
    assert time.perf_counter() - started < 1


def test_concurrent_requests_are_served_or_refused_with_retry_after(small_budget):
    data = noise_png(1000)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(small_budget, data), range(16)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
    assert post(small_budget, data).status_code == 200  # the budget is whole again


def test_slow_backend_calls_refuse_large_work(idle):
    budget = WorkBudget(capacity=10**9, deadline_s=10)
    large = 500_000_000  # 3.5 s at the idle rate
    for _ in range(30):
        budget.observe_backend(32, 32 * 0.02)  # 20 ms a tile: 15x slower than idle
    with pytest.raises(Overloaded):
        budget.take(large)
    budget.take(20_000_000)  # what still fits in the deadline is served


def test_a_version_twice_as_costly_per_tile_is_admitted_as_twice_the_work(models_repo, tmp_path):
    """A wider network (or an 8-view export) exports its multiply-adds; the budget weighs its tiles by them, so a
    version served after a cheaper one, or as the canary beside it, is not admitted at the cheaper one's cost."""
    import json
    import shutil

    from gateway.app import build
    from gateway.backends.base import ModelConfig
    from gateway.core import Pin

    repo = tmp_path / "repo"
    shutil.copytree(models_repo, repo)
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    meta_file = repo / "tiny" / "2" / "assets" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["multiply_adds"] *= 2
    meta_file.write_text(json.dumps(meta))
    core, _ = build(gateway_settings(repo))
    core.router.set_configs([ModelConfig("tiny", (1, 2), {"stable": 1})])  # what the lifespan's sync would load
    image = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    one, two = (core.plan([image], Pin(version=v), None)[0] for v in (1, 2))
    decoding = request_cost([ImageHeader("jpeg", 64, 64)], tiles=0)
    tile = admission.TILE_COST * meta["multiply_adds"] / 2 / admission.REFERENCE_MULTIPLY_ADDS
    assert one - decoding == pytest.approx(tile, abs=1) and two - decoding == pytest.approx(2 * tile, abs=1)
    assert admission.tile_weight(None) == 1.0  # a version exported before multiply-adds: the reference's cost

    # unpinned traffic is priced at the costliest version it may reach: the canary's, once a rollout runs
    from gateway.rollout.state import Phase, RolloutState

    assert core.plan([image], Pin(), None)[0] == one
    core.router.set_configs([ModelConfig("tiny", (1, 2), {"stable": 1, "canary": 2})])
    core.router.set_state(RolloutState(model="tiny", phase=Phase.running, stable=1, canary=2, weight=10))
    assert core.plan([image], Pin(), None)[0] == two
    assert core.plan([image], Pin(label="stable"), None)[0] == one  # a label always reaches one version
    core.router.set_state(RolloutState(model="tiny", phase=Phase.idle, stable=1))
    assert core.plan([image], Pin(), None)[0] == one
