"""Security (issue 6): admin authentication, no request-chosen paths, validated names, limits set from the
environment, a non-root image, and a configuration error that fails fast and says which variable is wrong.

Sample and static names (allow-listed) are tested in tests/test_demo_page.py; hostile image bytes in
tests/test_hostile_inputs.py.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import typing

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from tests.conftest import ROOT, LiveServer, encode, gateway_settings, make_image

TOKEN = "admin-s3cret-token"
IMAGE = encode(make_image("circles", np.random.default_rng(41)))
ADMIN_ROUTES = [("GET", "/v1/rollout", None), ("POST", "/v1/rollout/start", {"version": 1, "weight": 10}),
                ("POST", "/v1/rollout/weight", {"weight": 10}), ("POST", "/v1/rollout/promote", None),
                ("POST", "/v1/rollout/abort", None)]
PATH_LIKE = {"path", "url", "uri", "file", "filename", "filepath", "dir", "directory", "location", "src", "href"}
MAX_BODY, MAX_PIXELS = 20_000, 64 * 64


@pytest.fixture(scope="module")
def admin(models_repo, tmp_path_factory):
    """A gateway with an admin token, on its own copy of the repository (a rollout call may write a lock file)."""
    from gateway.app import create_app

    repo = tmp_path_factory.mktemp("secured") / "repo"
    shutil.copytree(models_repo, repo)
    with LiveServer(create_app(gateway_settings(repo, admin_token=TOKEN))) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def from_env(models_repo):
    """A gateway configured only through GATEWAY_* variables: small limits, no admin token."""
    from gateway.app import create_app
    from gateway.settings import Settings

    env = {"GATEWAY_MODELS_DIR": str(models_repo), "GATEWAY_MODEL_NAME": "tiny", "GATEWAY_GRPC_PORT": "0",
           "GATEWAY_MAX_BODY_BYTES": str(MAX_BODY), "GATEWAY_MAX_IMAGE_PIXELS": str(MAX_PIXELS)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
        settings = Settings()
    assert (settings.max_body_bytes, settings.max_image_pixels, settings.admin_token) == (MAX_BODY, MAX_PIXELS, None)
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def call(client: httpx.Client, method: str, path: str, body: dict | None, token: str | None = None,
         scheme: str = "Bearer") -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    return client.request(method, path, json=body, headers=headers)


def api_routes(routes) -> list[APIRoute]:
    """Every APIRoute, also those inside included routers (which this FastAPI keeps nested in app.routes)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        else:
            found += api_routes(getattr(getattr(route, "original_router", None), "routes", []))
    return found


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


# ---------------------------------------------------------------------------------------------- admin token


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_a_missing_or_wrong_token(admin, method, path, body):
    assert_error(admin.request(method, path, json=body), 401, "unauthorized")
    for given in ["Bearer wrong", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer", TOKEN, f"Basic {TOKEN}",
                  f"Token {TOKEN}"]:
        assert_error(admin.request(method, path, json=body, headers={"Authorization": given}), 401, "unauthorized")


def test_admin_token_is_checked_before_the_body(admin):
    assert_error(call(admin, "POST", "/v1/rollout/start", {"version": "../x", "weight": -1}), 401, "unauthorized")


def test_admin_routes_accept_the_right_token(admin):
    r = call(admin, "GET", "/v1/rollout", None, TOKEN)
    assert r.status_code == 200 and r.json()["phase"] == "idle"
    assert call(admin, "GET", "/v1/rollout", None, TOKEN, scheme="bearer").status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_are_disabled_without_a_token(from_env, method, path, body):
    assert_error(call(from_env, method, path, body), 403, "disabled")
    assert_error(call(from_env, method, path, body, TOKEN), 403, "disabled")


def test_token_comparison_is_constant_time_and_never_shown():
    from gateway.api import rollout_http
    from gateway.settings import Settings

    source = inspect.getsource(rollout_http.require_admin)
    assert "hmac.compare_digest(" in source and "get_secret_value() ==" not in source
    settings = Settings(admin_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


# ---------------------------------------------------------------------------- nothing names a file or URL


def model_field_names(annotation) -> set[str]:
    """Field names (and aliases) of the pydantic models in an annotation, nested models included."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        names = set()
        for name, field in annotation.model_fields.items():
            names |= {name, field.alias or name} | model_field_names(field.annotation)
        return names
    return set().union(*(model_field_names(arg) for arg in typing.get_args(annotation)))


def parameter_names(dependant) -> set[str]:
    """Every name a route reads from a request: path, query, header, cookie, body (and body model fields)."""
    groups = (dependant.path_params, dependant.query_params, dependant.header_params, dependant.cookie_params,
              dependant.body_params)
    names = {n for group in groups for p in group for n in (p.name, p.alias)}
    names |= set().union(*(model_field_names(p.field_info.annotation) for p in dependant.body_params))
    return names.union(*(parameter_names(sub) for sub in dependant.dependencies))


def test_no_route_takes_a_path_or_url(tmp_path):
    from gateway.api import schemas
    from gateway.app import create_app

    routes = api_routes(create_app(gateway_settings(tmp_path)).routes)
    assert {"/predict", "/gradcam", "/metrics", "/v1/samples", "/v1/rollout/start"} <= {r.path for r in routes}
    hand_read = model_field_names(schemas.PredictBatchRequest)  # /predict and /gradcam parse JSON by hand
    for route in routes:
        names = {n.lower() for n in parameter_names(route.dependant) | hand_read}
        assert not names & PATH_LIKE, (route.path, names & PATH_LIKE)
    with_path_params = {r.path for r in routes if r.dependant.path_params}
    # allow-listed: tests/test_demo_page.py, tests/test_http_hygiene.py::test_api_docs_work_offline
    assert with_path_params == {"/static/{name}", "/v1/samples/{name}", "/docs/assets/{name}"}


def test_no_grpc_request_field_is_a_path_or_url():
    from gateway.protos import gateway_pb2

    def fields(message) -> set[str]:
        return {f.name for f in message.fields}.union(
            *(fields(f.message_type) for f in message.fields if f.message_type is not None))

    for service in gateway_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert not fields(method.input_type) & PATH_LIKE, method.full_name


# --------------------------------------------------------------------------------- names and versions


@pytest.mark.parametrize("route", ["/predict", "/gradcam"])
@pytest.mark.parametrize(("params", "status"), [({"model": "../x"}, 422), ({"model": "/etc/passwd"}, 422),
                                                ({"model": "nope"}, 404), ({"version": 10**30}, 404),
                                                ({"version": 2**63}, 404), ({"label": "../stable"}, 422)])
def test_model_pins_are_validated_on_both_routes(admin, route, params, status):
    r = admin.post(route, files={"image": ("x.png", IMAGE)}, params=params)
    assert_error(r, status, "invalid_parameter" if status == 422 else "not_found")


def test_rollout_of_a_huge_or_missing_version_is_a_client_error(admin):
    for version in (10**30, 2**63, 99):
        r = call(admin, "POST", "/v1/rollout/start", {"version": version, "weight": 10}, TOKEN)
        assert r.status_code in (404, 422), r.text
    assert call(admin, "GET", "/v1/rollout", None, TOKEN).json()["phase"] == "idle"


# ------------------------------------------------------------------------------------- configurable limits


def flat_png(width: int, height: int) -> bytes:
    return encode(np.full((height, width, 3), 120, np.uint8))


def test_body_limit_from_the_environment(from_env):
    noise = encode(np.random.default_rng(5).integers(0, 256, (100, 100, 3), dtype=np.uint8))
    assert len(noise) > MAX_BODY
    r = from_env.post("/predict", files={"image": ("x.png", noise)})
    assert_error(r, 413, "payload_too_large")
    assert str(MAX_BODY) in r.json()["error"]["message"]


@pytest.mark.parametrize("route", ["/predict", "/gradcam"])
def test_pixel_limit_from_the_environment(from_env, route):
    assert from_env.post(route, files={"image": ("x.png", flat_png(64, 64))}).status_code == 200
    r = from_env.post(route, files={"image": ("x.png", flat_png(65, 64))})
    assert_error(r, 413, "payload_too_large")
    assert str(MAX_PIXELS) in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------ deployment and start


def test_container_runs_as_non_root():
    lines = [line.strip() for line in (ROOT / "Dockerfile.gateway").read_text().splitlines()]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")):]
    users = [line.split(None, 1)[1] for line in final_stage if line.upper().startswith("USER ")]
    assert users, "no USER instruction in the final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"USER {users[-1]}: want a numeric uid outside the system range"


@pytest.mark.parametrize(("variable", "value"), [("GATEWAY_HTTP_PORT", "abc"), ("GATEWAY_HTTP_PORT", "70000"),
                                                 ("GATEWAY_MAX_INFLIGHT", "0"), ("GATEWAY_BACKEND", "cloud"),
                                                 ("GATEWAY_REQUEST_TIMEOUT_S", "-1")])
def test_invalid_setting_fails_fast_naming_the_variable(variable, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env={**env, variable: value},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], out.stderr
