"""The generated gRPC modules (see protos/README.md). Importing this never imports TensorFlow."""

from __future__ import annotations

import sys
from pathlib import Path

_OUT = Path(__file__).resolve().parent / "_proto"
if not (_OUT / "tfserving" / "get_model_metadata_pb2.py").exists():  # no (or an older) `make setup`
    import subprocess

    # a child process: grpc_tools' native module crashes a process that has already loaded TensorFlow
    subprocess.run([sys.executable, "-m", "gateway.protos_build"], check=True, cwd=Path(__file__).parent.parent)
if str(_OUT) not in sys.path:
    sys.path.insert(0, str(_OUT))  # generated code imports its siblings as top-level packages

from scenecam import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from tfserving import (  # noqa: E402
    get_model_metadata_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    services_pb2_grpc,
    tensor_pb2,
)

__all__ = [
    "gateway_pb2",
    "gateway_pb2_grpc",
    "get_model_metadata_pb2",
    "model_management_pb2",
    "model_pb2",
    "predict_pb2",
    "services_pb2_grpc",
    "tensor_pb2",
]
