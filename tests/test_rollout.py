"""Canary rollouts: the split, stickiness, pinning, start/promote/abort under traffic on both backends, crash and
resume, automatic rollback, and bad input that leaves the state unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from gateway.backends.base import ModelConfig
from gateway.core import Pin
from gateway.model_config import INITIAL, RUNTIME
from gateway.rollout.router import CANARY, STABLE, Router
from gateway.rollout.state import Phase, RolloutState, RolloutStore
from tests.conftest import ROOT, LiveServer, encode, free_port, gateway_settings, make_image
from tests.test_tfserving_backend import start_standin

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = encode(make_image("circles", np.random.default_rng(21)))


def router_with(tmp_path, weight: float, phase: Phase = Phase.running, seed: int = 0) -> Router:
    store = RolloutStore(tmp_path, "tiny")
    store.write(RolloutState(model="tiny", phase=phase, stable=1, canary=2, weight=weight))
    router = Router("tiny", store, rng=random.Random(seed))
    router.set_configs([ModelConfig("tiny", (1, 2), {STABLE: 1, CANARY: 2})])
    return router


def test_weighted_split_within_binomial_tolerance(tmp_path):
    router = router_with(tmp_path, 10)
    roles = Counter(router.route(Pin())[1] for _ in range(2000))
    n, p = 2000, 0.10
    assert abs(roles[CANARY] - n * p) <= 4 * (n * p * (1 - p)) ** 0.5, roles  # 4 sigma: 200 +- 54
    assert roles[CANARY] + roles[STABLE] == n


def test_sticky_keys_and_pins(tmp_path):
    router = router_with(tmp_path, 30)
    first = {key: router.route(Pin(routing_key=key))[0].version for key in map(str, range(500))}
    again = {key: router.route(Pin(routing_key=key))[0].version for key in map(str, range(500))}
    assert first == again
    share = sum(v == 2 for v in first.values()) / 500
    assert 0.22 < share < 0.38
    router.rollout_store.write(RolloutState(model="tiny", phase=Phase.running, stable=1, canary=2, weight=60))
    router.set_state(router.rollout_store.read())
    raised = {key: router.route(Pin(routing_key=key))[0].version for key in first}
    assert all(raised[k] == 2 for k, v in first.items() if v == 2), "raising the weight moved a canary key back"
    for _ in range(50):
        assert router.route(Pin(version=1, routing_key="7"))[0].version == 1
        assert router.route(Pin(label=CANARY))[0].version == 2
    idle = router_with(tmp_path, 100, phase=Phase.idle)
    assert {idle.route(Pin())[1] for _ in range(50)} == {STABLE}


class Traffic:
    """Requests in a loop from two threads while the test changes the rollout; records every outcome."""

    def __init__(self, url: str):
        self.url = url
        self.stop = threading.Event()
        self.results: list[tuple[int, int | None]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                if n % 5 == 0:
                    r = client.post("/gradcam", files={"image": ("x.png", IMAGE)})
                    version = int(r.headers.get("X-Model-Version", 0)) if r.status_code == 200 else None
                else:
                    r = client.post("/predict", files={"image": ("x.png", IMAGE)},
                                    headers={"X-Routing-Key": f"user-{i}-{n}"})
                    version = r.json().get("version") if r.status_code == 200 else None
                self.results.append((r.status_code, version))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def mark(self) -> int:
        return len(self.results)

    def versions_since(self, mark: int) -> Counter:
        return Counter(v for _, v in self.results[mark:])


def _post(client: httpx.Client, path: str, body: dict | None = None) -> dict:
    r = client.post(path, json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for_traffic(traffic: Traffic, n: int = 20) -> None:
    mark = traffic.mark()
    deadline = time.monotonic() + 60
    while traffic.mark() < mark + n:
        assert time.monotonic() < deadline, "traffic stalled"
        time.sleep(0.05)


def _assert_config_loadable(repo, versions: set[int], labels: dict[str, int]) -> None:
    parsed = text_format.Parse((repo / RUNTIME).read_text(), model_server_config_pb2.ModelServerConfig())
    entry = parsed.model_config_list.config[0]
    assert set(entry.model_version_policy.specific.versions) == versions
    assert dict(entry.version_labels) == labels
    assert set(labels.values()) <= versions  # TF Serving could load it at restart


def run_full_sequence(url: str, repo) -> None:
    with httpx.Client(base_url=url) as client, Traffic(url) as traffic:
        _wait_for_traffic(traffic)
        status = _post(client, "/v1/rollout/start", {"version": 2, "weight": 50})
        assert status["phase"] == "running" and status["canary"] == 2 and status["stable"] == 1
        _assert_config_loadable(repo, {1, 2}, {"stable": 1, "canary": 2})
        mark = traffic.mark()
        _wait_for_traffic(traffic, 40)
        assert set(traffic.versions_since(mark)) >= {1, 2}
        _post(client, "/v1/rollout/weight", {"weight": 100})
        _wait_for_traffic(traffic)
        status = _post(client, "/v1/rollout/promote")
        assert status["phase"] == "idle" and status["stable"] == 2 and status["last_outcome"].startswith("promoted")
        _assert_config_loadable(repo, {2}, {"stable": 2})
        mark = traffic.mark()
        _wait_for_traffic(traffic, 20)
        assert set(traffic.versions_since(mark)) == {2}
        # a second rollout (back to version 1), aborted
        _post(client, "/v1/rollout/start", {"version": 1, "weight": 30, "shadow": 50})
        _wait_for_traffic(traffic, 30)
        status = _post(client, "/v1/rollout/abort", {"reason": "test abort"})
        assert status["phase"] == "idle" and status["stable"] == 2 and "test abort" in status["last_outcome"]
        _assert_config_loadable(repo, {2}, {"stable": 2})
        mark = traffic.mark()
        _wait_for_traffic(traffic, 20)
        assert set(traffic.versions_since(mark)) == {2}
    failures = [s for s, _ in traffic.results if s != 200]
    assert not failures, f"{len(failures)} of {len(traffic.results)} requests failed: {Counter(failures)}"


def as_committed(repo) -> str:
    """Make the repository look like a fresh checkout: only the initial models.config (the runtime one is seeded)."""
    (repo / INITIAL).write_text((repo / RUNTIME).read_text())
    (repo / RUNTIME).unlink()
    return (repo / INITIAL).read_text()


def test_start_promote_abort_under_traffic_local(rollout_repo):
    from gateway.app import create_app

    committed = as_committed(rollout_repo)
    settings = gateway_settings(rollout_repo, admin_token=TOKEN, rollout_poll_s=0.2)
    with LiveServer(create_app(settings)) as gw:
        run_full_sequence(gw.url, rollout_repo)
        assert not (rollout_repo / "tiny" / ".tmp").exists()
    assert (rollout_repo / INITIAL).read_text() == committed, "a rollout rewrote the committed config"


@contextmanager
def standin_for(repo, **kwargs):
    with start_standin(repo, **kwargs) as server:
        yield server


def test_start_promote_abort_under_traffic_tfserving(rollout_repo):
    from gateway.app import create_app

    committed = as_committed(rollout_repo)
    with standin_for(rollout_repo, load_delay_s=0.5) as standin:
        settings = gateway_settings(rollout_repo, admin_token=TOKEN, backend="tfserving",
                                    tfserving_address=standin.address, rollout_poll_s=0.2)
        with LiveServer(create_app(settings)) as gw:
            run_full_sequence(gw.url, rollout_repo)
        assert set(standin.version_states("tiny")) >= {1, 2}
        assert standin.version_states("tiny")[2] == standin.version_states("tiny")[2]  # served, then states kept
    assert (rollout_repo / INITIAL).read_text() == committed, "a rollout rewrote the committed config"


def _spawn_gateway(repo, port: int, address: str) -> subprocess.Popen:
    env = {**os.environ, "GATEWAY_MODELS_DIR": str(repo), "GATEWAY_MODEL_NAME": "tiny", "GATEWAY_HTTP_PORT": str(port),
           "GATEWAY_GRPC_PORT": "0", "GATEWAY_BACKEND": "tfserving", "GATEWAY_TFSERVING_ADDRESS": address,
           "GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_ROLLOUT_POLL_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)


def test_crash_mid_start_then_restart_resumes(rollout_repo):
    """Kill -9 the gateway while TF Serving is still loading the canary; the config on disk stays loadable and the
    restarted gateway finishes the start."""
    with standin_for(rollout_repo, load_delay_s=3.0) as standin:
        port = free_port()
        proc = _spawn_gateway(rollout_repo, port, standin.address)
        url = f"http://127.0.0.1:{port}"

        def start_rollout() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server is killed mid-request
                httpx.post(f"{url}/v1/rollout/start", headers=AUTH, timeout=60, json={"version": 2, "weight": 20})

        starter = threading.Thread(target=start_rollout, daemon=True)
        starter.start()
        deadline = time.monotonic() + 20
        while RolloutStore(rollout_repo, "tiny").read() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        state = json.loads((rollout_repo / "rollout.json").read_text())
        assert state["phase"] == "loading" and state["canary"] == 2
        parsed = text_format.Parse((rollout_repo / RUNTIME).read_text(), model_server_config_pb2.ModelServerConfig())
        entry = parsed.model_config_list.config[0]
        assert set(entry.version_labels.values()) <= set(entry.model_version_policy.specific.versions)
        proc = _spawn_gateway(rollout_repo, port, standin.address)
        try:
            status = httpx.get(f"{url}/v1/rollout", headers=AUTH, timeout=30).json()
            assert status["phase"] == "running" and status["canary"] == 2
            assert any(e["event"] == "resumed" for e in status["history"])
            assert httpx.post(f"{url}/predict", files={"image": ("x.png", IMAGE)}, params={"label": "canary"},
                              timeout=30).json()["version"] == 2
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _auto_rollback(repo, standin, wait_for: str, fault=lambda: None, **rollout) -> dict:
    from gateway.app import create_app

    settings = gateway_settings(repo, admin_token=TOKEN, backend="tfserving", tfserving_address=standin.address,
                                rollout_poll_s=0.2, rollback_min_requests=8, rollback_window_s=30,
                                request_timeout_s=5)
    with LiveServer(create_app(settings)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        _post(client, "/v1/rollout/start", {"version": 2, **rollout})
        fault()  # after the start: a canary that fails its warm-up never takes traffic at all
        deadline = time.monotonic() + 60
        while True:
            client.post("/predict", files={"image": ("x.png", IMAGE)})
            status = client.get("/v1/rollout", headers=AUTH).json()
            if status["phase"] == "idle":
                break
            assert time.monotonic() < deadline, f"no automatic rollback: {status['live']}"
        assert wait_for in status["last_outcome"] and "rolled back automatically" in status["last_outcome"]
        assert client.post("/predict", files={"image": ("x.png", IMAGE)}).json()["version"] == 1
        assert "gateway_rollout_automatic_rollbacks_total" in client.get("/metrics").text
        return status


def test_automatic_rollback_on_canary_errors(rollout_repo):
    with standin_for(rollout_repo) as standin:
        _auto_rollback(rollout_repo, standin, "error rate", weight=50,
                       fault=lambda: setattr(standin, "fail_versions", frozenset({2})))


def test_automatic_rollback_on_canary_latency(rollout_repo):
    with standin_for(rollout_repo) as standin:
        _auto_rollback(rollout_repo, standin, "p95 latency", weight=50,
                       fault=lambda: setattr(standin, "slow_versions", {2: 0.25}))


def test_automatic_rollback_on_low_shadow_agreement(rollout_repo):
    with standin_for(rollout_repo) as standin:
        status = _auto_rollback(rollout_repo, standin, "agreement", weight=0, shadow=100)
        assert status["live"]["shadow"]["comparisons"] >= 0


def test_bad_input_leaves_state_unchanged(rollout_repo):
    from gateway.app import create_app

    with LiveServer(create_app(gateway_settings(rollout_repo, admin_token=TOKEN, rollout_poll_s=0.2))) as gw, \
            httpx.Client(base_url=gw.url, timeout=60) as client:
        before = (rollout_repo / RUNTIME).read_text()
        cases = [
            ({"version": 9, "weight": 10}, AUTH, 404),
            ({"version": 2, "weight": 150}, AUTH, 422),
            ({"version": 2, "weight": -1}, AUTH, 422),
            ({"version": 1, "weight": 10}, AUTH, 409),  # already stable
            ({"version": 2, "weight": 10}, {}, 401),
            ({"version": 2, "weight": 10}, {"Authorization": "Bearer wrong"}, 401),
        ]
        for body, headers, status in cases:
            r = client.post("/v1/rollout/start", json=body, headers=headers)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"]
        assert not (rollout_repo / "rollout.json").exists() or \
            json.loads((rollout_repo / "rollout.json").read_text())["phase"] == "idle"
        assert (rollout_repo / RUNTIME).read_text() == before
        assert client.post("/v1/rollout/promote", headers=AUTH).status_code == 409
        _post(client, "/v1/rollout/start", {"version": 2, "weight": 10})
        snapshot = (rollout_repo / "rollout.json").read_text()
        r = client.post("/v1/rollout/start", json={"version": 2, "weight": 10}, headers=AUTH)
        assert r.status_code == 409 and "promote or abort" in r.json()["error"]["message"]
        assert client.post("/v1/rollout/weight", json={"weight": 101}, headers=AUTH).status_code == 422
        assert (rollout_repo / "rollout.json").read_text() == snapshot
    with LiveServer(create_app(gateway_settings(rollout_repo))) as gw:
        r = httpx.get(f"{gw.url}/v1/rollout", headers=AUTH)
        assert r.status_code == 403 and "GATEWAY_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_cli_drives_a_rollout(rollout_repo):
    from gateway.app import create_app

    with LiveServer(create_app(gateway_settings(rollout_repo, admin_token=TOKEN, rollout_poll_s=0.2))) as gw:
        env = {**os.environ, "GATEWAY_URL": gw.url, "GATEWAY_ADMIN_TOKEN": TOKEN}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "gateway", "rollout", *args], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)

        out = cli("start", "--version", "2", "--weight", "25")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["phase"] == "running"
        assert json.loads(cli("status").stdout)["weight"] == 25
        bad = cli("set-weight", "--weight", "250")
        assert bad.returncode == 2 and "between 0 and 100" in bad.stderr
        again = cli("start", "--version", "2", "--weight", "5")
        assert again.returncode == 2 and again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1
        assert json.loads(cli("promote").stdout)["stable"] == 2
        wrong = subprocess.run([sys.executable, "-m", "gateway", "rollout", "--token", "nope", "status"], cwd=ROOT,
                               env={**env, "GATEWAY_ADMIN_TOKEN": ""}, capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 2 and "bearer token" in wrong.stderr


def test_two_replicas_share_the_rollout(rollout_repo):
    """A rollout started on one replica reaches the other through models.config and rollout.json alone."""
    from gateway.app import create_app

    def replica():
        return LiveServer(create_app(gateway_settings(rollout_repo, admin_token=TOKEN, rollout_poll_s=0.2)))

    def served_by(url: str, **params) -> int:
        answer = httpx.post(f"{url}/predict", files={"image": ("x.png", IMAGE)}, params=params, timeout=30)
        return answer.json()["version"]

    def eventually(check, what: str) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    with replica() as a, replica() as b:
        _post(httpx.Client(base_url=a.url), "/v1/rollout/start", {"version": 2, "weight": 100})
        eventually(lambda: served_by(b.url) == 2, "replica B never sent traffic to the canary")
        assert served_by(b.url, label="canary") == 2
        assert httpx.get(f"{b.url}/v1/rollout", headers=AUTH).json()["phase"] == "running"
        _post(httpx.Client(base_url=b.url), "/v1/rollout/promote")  # promoted through the other replica
        eventually(lambda: served_by(a.url, label="stable") == 2, "replica A never saw the promotion")
        eventually(lambda: [v["version"] for v in httpx.get(f"{a.url}/v1/models").json()["models"][0]["versions"]]
                   == [2], "replica A still lists version 1")


# ---- fail fast, judge only what a version serves, judge fairly ------------------------------------------------------


def _gateway(repo, backend: str, standin=None, **overrides) -> LiveServer:
    from gateway.app import create_app

    extra = {"backend": "tfserving", "tfserving_address": standin.address} if backend == "tfserving" else {}
    return LiveServer(create_app(gateway_settings(repo, admin_token=TOKEN, rollout_poll_s=0.2, **extra, **overrides)))


@contextmanager
def _backend(repo, backend: str):
    """(the stand-in or None, a gateway on `backend`) for the repository."""
    if backend == "local":
        with _gateway(repo, backend) as gw:
            yield None, gw
    else:
        with standin_for(repo) as standin, _gateway(repo, backend, standin) as gw:
            yield standin, gw


@pytest.mark.parametrize("backend", ["local", "tfserving"])
def test_a_version_that_fails_to_load_ends_the_start_at_once(rollout_repo, backend):
    """A corrupt SavedModel: TF Serving ends the version with an error status (local: the loader raises), and the
    start answers with that reason within seconds, not after the 300 s load timeout; stable keeps serving."""
    shutil.copytree(rollout_repo / "tiny" / "2", rollout_repo / "tiny" / "3")
    (rollout_repo / "tiny" / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with _backend(rollout_repo, backend) as (_, gw), httpx.Client(base_url=gw.url, timeout=120) as client:
        started = time.monotonic()
        r = client.post("/v1/rollout/start", json={"version": 3, "weight": 10}, headers=AUTH)
        elapsed = time.monotonic() - started
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
        message = r.json()["error"]["message"]
        assert message.startswith("model 'tiny' version 3 failed to load: ") and len(message) > 40, message
        assert elapsed < 20, f"{elapsed:.1f} s: the rollout waited for the load timeout"
        status = client.get("/v1/rollout", headers=AUTH).json()
        assert status["phase"] == "idle" and status["canary"] is None
        assert status["last_outcome"] == f"start of version 3 failed: {message}"
        _assert_config_loadable(rollout_repo, {1}, {"stable": 1})
        assert client.post("/predict", files={"image": ("x.png", IMAGE)}).json()["version"] == 1
        _post(client, "/v1/rollout/start", {"version": 2, "weight": 10})  # nothing left half-done


def test_a_canary_without_the_multilayer_signature_rolls_out_and_answers_the_fused_method_404(
        rollout_repo, tmp_path):
    """Warm-up calls only the signatures the version has; the fused method on it is the documented 404 (not held
    against it), while stable still serves it."""
    from tests.test_tfserving_backend import export_without_multilayer

    export_without_multilayer(rollout_repo / "tiny" / "2", tmp_path / "2")
    shutil.rmtree(rollout_repo / "tiny" / "2")
    shutil.copytree(tmp_path / "2", rollout_repo / "tiny" / "2")
    with _backend(rollout_repo, "tfserving") as (standin, gw), httpx.Client(base_url=gw.url, timeout=60) as client:
        status = _post(client, "/v1/rollout/start", {"version": 2, "weight": 50})
        assert status["phase"] == "running" and status["canary"] == 2
        assert standin.calls[(2, "gradcam")] == 1 and standin.calls[(2, "gradcam_multilayer")] == 0
        fused = {"method": "layercam-fused"}
        r = client.post("/gradcam", files={"image": ("x.png", IMAGE)}, params={**fused, "label": "canary"})
        assert r.status_code == 404 and "'gradcam_multilayer'" in r.json()["error"]["message"]
        r = client.post("/gradcam", files={"image": ("x.png", IMAGE)}, params={**fused, "label": "stable"})
        assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
        versions = {v["version"]: v for v in client.get("/v1/models").json()["models"][0]["versions"]}
        assert "layercam-fused" in versions[1]["methods"] and "layercam-fused" not in versions[2]["methods"]
        assert client.get("/v1/rollout", headers=AUTH).json()["phase"] == "running"


def test_an_outage_on_both_versions_does_not_roll_the_canary_back(rollout_repo):
    """Stable alone for a while (weight 0), then TF Serving fails every call on both versions and the weight goes to
    50: the canary's window holds only the outage, stable's mostly healthy traffic (the old whole-window comparison
    rolled it back). Compared between neighbours in time the two are equal: the rollout runs through the outage."""
    with standin_for(rollout_repo) as standin, \
            _gateway(rollout_repo, "tfserving", standin, rollback_min_requests=8, rollback_window_s=30) as gw, \
            httpx.Client(base_url=gw.url, timeout=30) as client:
        _post(client, "/v1/rollout/start", {"version": 2, "weight": 0})

        def send(n: int) -> Counter:
            seen = Counter()
            for _ in range(n):
                r = client.post("/predict", files={"image": ("x.png", IMAGE)})
                seen[r.status_code, r.json().get("version")] += 1
                assert client.get("/v1/rollout", headers=AUTH).json()["phase"] == "running", seen
            return seen

        assert send(30) == {(200, 1): 30}
        standin.fail_versions = {1, 2}
        assert send(10) == {(503, None): 10}
        _post(client, "/v1/rollout/weight", {"weight": 50})
        assert set(send(40)) == {(503, None)}
        live = client.get("/v1/rollout", headers=AUTH).json()["live"]
        assert live["canary"]["error_rate"] == 1.0 and live["stable"]["error_rate"] < 0.8, live  # unfair overall
        # every canary call is matched with the stable calls just before it, which failed too (fixed clock slices
        # compared a canary call with healthy stable calls earlier in its slice: rolled back about one run in four)
        matched = live["matched"]
        assert matched["canary_error_rate"] == matched["stable_error_rate"] == 1.0 and matched["z"] == 0, live
        standin.fail_versions = set()
        assert {v for _, v in send(30)} == {1, 2}


def test_monitor_compares_neighbours_in_time_and_needs_significance():
    """The monitor alone, on a fake clock (1 s slices): starved or unlucky samples never breach; a real excess does."""
    from gateway.rollout.monitor import Monitor
    from gateway.settings import Settings

    now = [0.0]
    monitor = Monitor(Settings(rollback_window_s=60, rollback_min_requests=20), clock=lambda: now[0])

    def feed(n: int, stable_failures: int, canary_failures: int | None) -> None:
        """n requests per side, alternating, 0.05 s apart; the first `*_failures` of each side fail."""
        for i in range(n):
            for role, failures in (("stable", stable_failures), ("canary", canary_failures)):
                if failures is not None:
                    now[0] += 0.05
                    monitor.observe(role, 0.01, failed=i < failures)

    feed(40, 0, None)  # stable alone and healthy for 4 s (weight 0)
    feed(20, 20, None)  # an outage: stable fails ...
    feed(40, 40, 40)  # ... then both fail while the canary takes half the traffic
    assert monitor.stats()["canary"]["error_rate"] == 1.0 > 1.5 * monitor.stats()["stable"]["error_rate"]
    assert monitor.breach() is None, monitor.compare()
    monitor.reset()
    now[0] = 100.0
    feed(12, 0, None)  # healthy stable for 0.6 s of a 1 s clock slice, then the outage and the canary start together
    feed(30, 30, 30)
    c = monitor.compare()  # only the one group that straddles the onset differs
    assert monitor.breach() is None and c.z < 2 and c.excess_error_rate < 0.05, c
    monitor.reset()
    feed(20, 0, 3)  # a handful of unlucky canary samples: 3 of 20 failed vs 0 of 20
    assert monitor.breach() is None, monitor.compare()
    feed(20, 0, 10)  # then a canary that really fails half its requests
    assert "error rate" in monitor.breach(), monitor.compare()
    monitor.reset()
    feed(19, 0, 19)  # below the minimum count on each side: not judged yet
    assert monitor.breach() is None
