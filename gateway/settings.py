"""Configuration: every setting is an environment variable with the `GATEWAY_` prefix (pydantic-settings)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendKind(str, Enum):
    local = "local"
    tfserving = "tfserving"


class Settings(BaseSettings):
    """Gateway settings. Each field `x` is read from the environment variable `GATEWAY_X`."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=None, extra="ignore")

    backend: BackendKind = Field(BackendKind.local, description="`local` (TensorFlow in-process) or `tfserving` (gRPC)")
    models_dir: Path = Field(Path("models"), description="model repository: <name>/<version>/ SavedModels, "
                             "models.config (initial, never written), models.runtime.config and rollout.json")
    model_name: str = Field("eurosat", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the model served by default")
    tfserving_address: str = Field("localhost:8500", description="TensorFlow Serving gRPC host:port")
    tfserving_base_path: str = Field("/models", description="models_dir as TensorFlow Serving sees it")
    host: str = Field("127.0.0.1", description="HTTP and gRPC bind address (0.0.0.0 in containers)")
    http_port: int = Field(8080, ge=1, le=65535, description="HTTP port")
    grpc_port: int = Field(9090, ge=0, le=65535, description="the gateway's own gRPC API port (0: disabled)")
    workers: int = Field(1, ge=1, le=64, description="HTTP worker processes; one event loop saturates one core, so "
                         "set it to the cores you give the gateway (each `local` worker holds its own model)")
    admin_token: SecretStr | None = Field(None, description="bearer token for /v1/rollout; unset disables those routes")
    request_timeout_s: float = Field(10.0, gt=0, le=300, description="per-request deadline to the backend")
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest request body accepted (413 above)")
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest decoded image (width x height)")
    max_batch_instances: int = Field(32, gt=0, le=1024, description="largest JSON batch")
    max_top_k: int = Field(100, gt=0, description="largest top_k accepted")
    max_output_side: int = Field(1024, ge=64, description="cap on the heat-map PNG's longest side")
    max_scene_tiles: int = Field(1024, gt=0, description="most tiles one request may cover at the model's ground "
                                 "resolution (1024: 2048x2048 px at 10 m, 420 km2); larger rasters: `python -m gateway "
                                 "scene`")
    min_gsd_m: float = Field(0.01, gt=0, description="smallest accepted gsd_m (metres per pixel)")
    max_gsd_m: float = Field(10_000, gt=0, description="largest accepted gsd_m (metres per pixel)")
    max_batch_size: int = Field(32, gt=0, description="micro-batching: most images per backend call")
    batch_slots: int = Field(2, gt=0, le=64, description="micro-batching: concurrent backend calls per version; "
                             "requests arriving while all are busy are merged into the next call")
    max_inflight: int = Field(256, gt=0, description="requests admitted at once; more get 503 with Retry-After")
    max_inflight_pixels: int = Field(
        700_000_000, gt=0, description="work admitted at once, in pixel-equivalents (gateway/admission.py): a request "
        "costs its declared pixels (x 1 for JPEG/BMP up to x 10 for GIF, by decoding time) plus 190,000 per model "
        "tile (x the version's multiply-adds against the default-width network's, x the CAM method's weight). Past "
        "it, 503 with Retry-After at once (also when, at the speed the backend serves now, a large request would not "
        "finish within the deadline); a request costing more than all of it, 413. The default admits one scene at "
        "the default tile limit on versions 4 and 5 with any CAM method and format (679 M at most). Images are "
        "decoded one at a time per request, so the decoded images in flight stay under 3 bytes x this as RGB (2.1 GB "
        "at the default; far less in practice: only the decode threads decode at once)")
    shadow_queue_size: int = Field(64, gt=0, description="bounded queue of mirrored (shadow) requests")
    rollout_poll_s: float = Field(1.0, gt=0, description="how often replicas re-read the shared rollout state")
    rollout_load_timeout_s: float = Field(300, gt=0, description="how long a new version may take to load")
    rollback_enabled: bool = Field(True, description="abort a rollout automatically when the canary misbehaves")
    rollback_window_s: float = Field(60, gt=0, description="sliding window of the automatic-rollback checks")
    rollback_min_requests: int = Field(20, gt=0, description="requests per version in the window before judging")
    rollback_max_error_increase: float = Field(0.05, ge=0, le=1,
                                               description="canary error rate may exceed stable's by this much")
    rollback_max_latency_ratio: float = Field(2.0, ge=1, description="canary p95 latency may be this many times "
                                              "stable's (plus rollback_latency_slack_s)")
    rollback_latency_slack_s: float = Field(0.05, ge=0, description="absolute slack added to the latency limit")
    rollback_min_agreement: float = Field(0.8, ge=0, le=1, description="shadow top-1 agreement floor")
    samples_dir: Path = Field(Path("tests/samples"), description="sample tiles the demo page offers")
    log_level: str = Field("info", description="uvicorn log level")
    head_timeout_s: float = Field(10, gt=0, le=300, description="a request's line and headers must arrive within "
                                  "this time (slow-header clients get 408 and are closed)")
    body_timeout_s: float = Field(20, gt=0, le=3600, description="a request body must arrive whole within this time "
                                  "of its headers (408 and close); 20 s carries 10 MiB at 4 Mbit/s")
    keep_alive_s: int = Field(5, ge=1, le=300, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(2048, ge=16, description="open HTTP connections per worker; past it a new one gets "
                                 "503 and is closed at once, so file descriptors stay bounded (keep it under "
                                 "`ulimit -n`)")
    cors_origins: str = Field("", description="comma-separated origins allowed to call the API from a browser "
                              "(`*` for any); empty: CORS off")
