"""`python -m gateway`: serve (HTTP + gRPC). `python -m gateway rollout ...`: drive a canary rollout."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

from pydantic import ValidationError

from gateway.settings import Settings


def settings_help() -> str:
    lines = ["environment variables (prefix GATEWAY_):"]
    for name, field in Settings.model_fields.items():
        default = field.default.value if hasattr(field.default, "value") else field.default
        lines.append(f"  GATEWAY_{name.upper():<24} {field.description} (default: {default})")
    return "\n".join(lines)


def config_error(exc: Exception) -> str:
    """One line naming each bad variable as the operator spells it (GATEWAY_HTTP_PORT, not http_port)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"GATEWAY_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


def exit_0(signum: int, frame: object) -> None:
    """uvicorn drains in-flight requests on SIGTERM, then re-raises the signal: end with status 0, not as killed."""
    raise SystemExit(0)


def raise_descriptor_limit(connections: int) -> None:
    """Raise the soft open-files limit to the hard one; warn when it cannot hold GATEWAY_MAX_CONNECTIONS plus the
    descriptors the process needs besides (model files, gRPC, logs)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and connections + 256 > soft:
        print(f"warning: `ulimit -n` is {soft}: lower GATEWAY_MAX_CONNECTIONS ({connections}) below {soft - 256} or "
              "raise the limit, or descriptors can run out before connections are refused", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "scene":
        from gateway.scene_cli import main as scene_main

        return scene_main(argv[1:])
    if argv and argv[0] == "rollout":
        from gateway.rollout.cli import main as rollout_main

        return rollout_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Serve the scenecam gateway: HTTP (FastAPI, docs at /docs) and gRPC on one process. "
        "`python -m gateway rollout --help` drives canary rollouts; `python -m gateway scene --help` maps rasters "
        "of any size.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # say which variable is wrong, in one line
        print(f"error: invalid configuration: {config_error(exc)}", file=sys.stderr)
        return 2
    import uvicorn

    from gateway.api.limits import server_options
    from gateway.app import create_app

    signal.signal(signal.SIGTERM, exit_0)
    raise_descriptor_limit(settings.max_connections)
    options = {"host": settings.host, "port": settings.http_port, "log_level": settings.log_level,
               "timeout_graceful_shutdown": 30, **server_options(settings)}
    if settings.workers > 1:  # processes, each with its own event loop (and, with `local`, its own model copy)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics must add up every worker's counters
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
        uvicorn.run("gateway.app:create_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
