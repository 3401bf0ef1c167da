"""`python -m bench.slow_clients`: are slow-header and stalled-body connections closed while normal calls succeed?

Against `python -m gateway` (its own connection limits) or, with `--plain-uvicorn`, the same app under uvicorn's
defaults: opens N connections that send a request head a byte every 2 s (slowloris) and M that send a head and a few
bytes of a body that never comes, calls /healthz and /predict twice a second meanwhile, and records when the server
closes each slow connection. Loopback only; it stops after `--limit` seconds whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import servers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="eurosat")
    parser.add_argument("--slow-headers", type=int, default=300)
    parser.add_argument("--stalled-bodies", type=int, default=100)
    parser.add_argument("--limit", type=float, default=40, help="seconds to watch the connections")
    parser.add_argument("--plain-uvicorn", action="store_true", help="uvicorn's defaults, without the gateway's limits")
    parser.add_argument("--out", type=Path, default=Path("bench/results/slow_clients.json"))
    return parser.parse_args(argv)


def plain_uvicorn(models_dir: Path, model: str) -> servers.Server:
    port = servers.free_port()
    env = {"GATEWAY_MODELS_DIR": str(models_dir.resolve()), "GATEWAY_MODEL_NAME": model, "GATEWAY_GRPC_PORT": "0"}
    args = ["-m", "uvicorn", "gateway.app:create_app", "--factory", "--host", servers.HOST, "--port", str(port),
            "--log-level", "warning"]
    return servers.Server("uvicorn", args, env, "/readyz", port)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    image = next(iter(sorted(Path("tests/samples").glob("*.jpg"))), None)
    data = image.read_bytes() if image else b""
    server = plain_uvicorn(args.models_dir, args.model) if args.plain_uvicorn else \
        servers.gateway(args.models_dir, args.model, {"GATEWAY_WORKERS": "1"})
    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        selector = selectors.DefaultSelector()
        opened, closed, kind = {}, {}, {}
        for i in range(args.slow_headers + args.stalled_bodies):
            s = socket.create_connection((servers.HOST, server.port), timeout=5)
            stalled = i >= args.slow_headers
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                      b"100000\r\n\r\n{\"instances\": [" if stalled else b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            opened[s], kind[s] = time.monotonic(), "stalled_body" if stalled else "slow_header"
        start, statuses, next_call, next_drip = time.monotonic(), [], 0.0, 2.0
        while len(closed) < len(opened) and time.monotonic() - start < args.limit:
            for key, _ in selector.select(timeout=0.1):
                try:
                    alive = bool(key.fileobj.recv(65536))
                except OSError:
                    alive = False
                if not alive:
                    closed[key.fileobj] = time.monotonic() - opened[key.fileobj]
                    selector.unregister(key.fileobj)
            now = time.monotonic() - start
            if now >= next_drip:  # the slowloris trickle: a byte of header every 2 s
                for s in opened:
                    if kind[s] == "slow_header" and s not in closed:
                        with contextlib.suppress(OSError):
                            s.send(b"a")
                next_drip += 2
            if now >= next_call:
                statuses.append(client.get("/healthz").status_code)
                statuses.append(client.post("/predict", files={"image": ("x.jpg", data)}).status_code)
                next_call += 0.5
        report = {"server": "plain uvicorn" if args.plain_uvicorn else "python -m gateway (defaults)",
                  "finished": datetime.now(UTC).isoformat(timespec="seconds"), "watched_s": args.limit,
                  "machine": servers.machine(), "calls": len(statuses),
                  "calls_200": statuses.count(200)}
        for name in ("slow_header", "stalled_body"):
            times = sorted(closed[s] for s in opened if kind[s] == name and s in closed)
            report[name] = {"connections": sum(kind[s] == name for s in opened), "closed": len(times),
                            "still_open": sum(kind[s] == name and s not in closed for s in opened),
                            "first_closed_s": round(times[0], 2) if times else None,
                            "last_closed_s": round(times[-1], 2) if times else None}
        for s in opened:
            s.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
