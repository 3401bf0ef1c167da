"""`python -m gateway rollout start|status|set-weight|promote|abort`: a thin client of a gateway's /v1/rollout.

The operations run inside a gateway (which owns the backend and models.runtime.config), so they behave the same with the
local and the tfserving backend; any replica can take them, since they share rollout.json and models.runtime.config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def _request(url: str, token: str, method: str, path: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
                        help="a gateway's base URL (env GATEWAY_URL, default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("GATEWAY_ADMIN_TOKEN"),
                        help="the admin bearer token (env GATEWAY_ADMIN_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="load VERSION and send it WEIGHT %% of traffic as the canary")
    start.add_argument("--version", type=int, required=True)
    start.add_argument("--weight", type=_percent, required=True, help="percent of traffic to the canary")
    start.add_argument("--shadow", type=_percent, default=0.0, help="percent of stable traffic mirrored to it")
    sub.add_parser("status", help="phase, versions, weights and the live canary/stable comparison")
    weight = sub.add_parser("set-weight", help="change the canary's share of traffic")
    weight.add_argument("--weight", type=_percent, required=True)
    weight.add_argument("--shadow", type=_percent, default=None)
    sub.add_parser("promote", help="make the canary stable and unload the old version")
    abort = sub.add_parser("abort", help="send all traffic back to stable and unload the canary")
    abort.add_argument("--reason", default="aborted by operator")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.token:
        print("error: no admin token: pass --token or set GATEWAY_ADMIN_TOKEN", file=sys.stderr)
        return 2
    calls = {
        "start": ("POST", "/v1/rollout/start", {"version": getattr(args, "version", None),
                                                "weight": getattr(args, "weight", None),
                                                "shadow": getattr(args, "shadow", None)}),
        "status": ("GET", "/v1/rollout", None),
        "set-weight": ("POST", "/v1/rollout/weight", {"weight": getattr(args, "weight", None),
                                                      "shadow": getattr(args, "shadow", None)}),
        "promote": ("POST", "/v1/rollout/promote", None),
        "abort": ("POST", "/v1/rollout/abort", {"reason": getattr(args, "reason", None)}),
    }
    method, path, body = calls[args.command]
    try:
        print(json.dumps(_request(args.url, args.token, method, path, body), indent=1))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"error: {message} (HTTP {exc.code})", file=sys.stderr)
        return 2 if exc.code < 500 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the gateway at {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    return 0
