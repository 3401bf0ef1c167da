"""The TF Serving model config: parse, render, and write atomically.

`models/models.config` is the committed, initial config and is never written; what rollouts change lives beside it in
`models/models.runtime.config` (ignored by git), seeded from the initial one. TensorFlow Serving reads the runtime
file (`--model_config_file`), so running the service or a rollout leaves every tracked file as committed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from google.protobuf import text_format

from gateway.backends.base import ModelConfig, read_version_metas
from gateway.backends.tfserving import model_server_config
from gateway.protos import model_management_pb2

HEADER = (
    "# TensorFlow Serving model config (text ModelServerConfig), owned by the gateway: `python -m gateway rollout`\n"
    "# rewrites it atomically. Paths are as TensorFlow Serving sees them. Runtime state: do not commit.\n"
)


def parse(text: str) -> list[ModelConfig]:
    server = text_format.Parse(text, model_management_pb2.ModelServerConfig())
    configs = []
    for entry in server.model_config_list.config:
        policy = entry.model_version_policy
        versions = tuple(policy.specific.versions) if policy.HasField("specific") else ()
        configs.append(ModelConfig(entry.name, versions, dict(entry.version_labels)))
    return configs


def render(configs: list[ModelConfig], base_path: str) -> str:
    return HEADER + text_format.MessageToString(model_server_config(configs, base_path))


def atomic_write(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: readers (and a restarted TF Serving) see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


INITIAL = "models.config"
RUNTIME = "models.runtime.config"


class ConfigStore:
    """Reads the runtime config, else the initial one; with neither, the newest exported version labelled `stable`."""

    def __init__(self, models_dir: Path, base_path: str):
        self.path = models_dir / RUNTIME
        self.initial_path = models_dir / INITIAL
        self.models_dir = models_dir
        self.base_path = base_path

    def seed(self) -> None:
        """Create the runtime file from the initial one if it is missing (a TF Serving started later reads it)."""
        if not self.path.is_file() and self.initial_path.is_file():
            atomic_write(self.path, self.initial_path.read_text())

    def read(self, default_model: str) -> list[ModelConfig]:
        for path in (self.path, self.initial_path):
            if path.is_file():
                return parse(path.read_text())
        versions = sorted(read_version_metas(self.models_dir / default_model))
        if not versions:
            return []
        return [ModelConfig(default_model, (versions[-1],), {"stable": versions[-1]})]

    def write(self, configs: list[ModelConfig]) -> None:
        atomic_write(self.path, render(configs, self.base_path))
