"""Sliding-window comparison of canary and stable: error rate, p95 latency, shadow agreement -> rollback reason.

Canary and stable are compared only between calls that are neighbours in time: walking the window's calls in order,
each call of one version is matched with the (at most MATCH_SPAN) calls of the other version just before it, and
each such group is one stratum of a Mantel-Haenszel comparison. An outage that hits both versions fails both sides of
every stratum after it starts, so it is nobody's fault, whenever it starts; fixed clock slices were not enough (a
canary call late in a slice was compared with stable's healthy calls early in it). An error-rate breach also needs to
be significant (one-sided CMH test at 99%), so a handful of unlucky samples never rolls a canary back.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from gateway.settings import Settings

MATCH_SPAN = 4  # calls of the other version matched with one call: enough for a 20% canary to use all of stable's
MATCH_GAP = 1 / 60  # of the window: a match older than this (1 s at the default 60 s) says nothing about the call
Z_CRITICAL = 2.33  # one-sided 99%


@dataclass(frozen=True)
class Comparison:
    """Canary vs stable over the matched strata: requests, error rates, MH excess and its z score."""

    stable_requests: int
    canary_requests: int
    stable_error_rate: float
    canary_error_rate: float
    excess_error_rate: float  # Mantel-Haenszel risk difference, canary minus stable
    z: float
    stable_p95_s: float | None
    canary_p95_s: float | None


class Monitor:
    def __init__(self, settings: Settings, clock=time.monotonic):
        self.s = settings
        self.clock = clock
        # (time, latency or None for a shadow call, failed)
        self.calls: dict[str, deque] = {"stable": deque(), "canary": deque()}
        self.agreement: deque = deque()

    def reset(self) -> None:
        for window in (*self.calls.values(), self.agreement):
            window.clear()

    def _prune(self, now: float) -> None:
        horizon = now - self.s.rollback_window_s
        for window in (*self.calls.values(), self.agreement):
            while window and window[0][0] < horizon:
                window.popleft()

    def observe(self, role: str, elapsed: float | None, failed: bool) -> None:
        """One answer of `role`; `elapsed=None` (a shadow call) counts for the error rate, not the latency."""
        now = self.clock()
        self.calls[role].append((now, elapsed, failed))
        self._prune(now)

    def record_agreement(self, agree: bool) -> None:
        now = self.clock()
        self.agreement.append((now, agree, None))
        self._prune(now)

    def _strata(self) -> list[dict[str, list]]:
        """Disjoint groups of neighbours in time: a run of one version's calls (its last MATCH_SPAN, each at most
        MATCH_GAP of the window older) closed by the next call of the other version."""
        gap = self.s.rollback_window_s * MATCH_GAP
        merged = heapq.merge(*([(at, role, elapsed, failed) for at, elapsed, failed in window]
                               for role, window in self.calls.items()))
        strata, run = [], []
        for at, role, elapsed, failed in merged:
            if run and run[0][1] != role:
                near = [(e, f) for t, _, e, f in run[-MATCH_SPAN:] if at - t <= gap]
                if near:
                    strata.append({run[0][1]: near, role: [(elapsed, failed)]})
                run = []
            else:
                run.append((at, role, elapsed, failed))
        return strata

    def compare(self) -> Comparison | None:
        """Both versions within matched strata; None until some call has a neighbour of the other version."""
        self._prune(self.clock())
        shared = self._strata()
        if not shared:
            return None
        n = {role: sum(len(s[role]) for s in shared) for role in ("stable", "canary")}
        errors = {role: sum(f for s in shared for _, f in s[role]) for role in ("stable", "canary")}
        diff = weight = deviation = variance = 0.0
        for s in shared:
            ns, nc = len(s["stable"]), len(s["canary"])
            es, ec = sum(f for _, f in s["stable"]), sum(f for _, f in s["canary"])
            total, failed = ns + nc, es + ec
            diff += (ec * ns - es * nc) / total
            weight += ns * nc / total
            deviation += ec - nc * failed / total
            if total > 1:
                variance += ns * nc * failed * (total - failed) / (total * total * (total - 1))
        z = deviation / math.sqrt(variance) if variance > 0 else 0.0
        return Comparison(n["stable"], n["canary"], errors["stable"] / n["stable"], errors["canary"] / n["canary"],
                          diff / weight, z, *(_p95([e for s in shared for e, f in s[role] if not f and e is not None])
                                               for role in ("stable", "canary")))

    def stats(self) -> dict:
        self._prune(self.clock())
        out = {}
        for role, window in self.calls.items():
            timed = [w[1] for w in window if w[1] is not None]
            out[role] = {
                "requests": len(window),
                "error_rate": round(sum(w[2] for w in window) / len(window), 4) if window else None,
                "p95_latency_s": _round(_p95(timed)),
            }
        out["shadow"] = self._shadow()
        c = self.compare()
        out["matched"] = None if c is None else {k: _round(v) for k, v in asdict(c).items()}
        return out

    def _shadow(self) -> dict:
        agree = [w[1] for w in self.agreement]
        return {"comparisons": len(agree), "agreement": round(sum(agree) / len(agree), 4) if agree else None}

    def breach(self) -> str | None:
        """Why the canary must be rolled back now, or None; judged only with enough requests on both sides."""
        s, c = self.s, self.compare()
        if c is not None and min(c.stable_requests, c.canary_requests) >= s.rollback_min_requests:
            if c.excess_error_rate > s.rollback_max_error_increase and c.z >= Z_CRITICAL:
                return (f"canary error rate {c.canary_error_rate:.1%} exceeds stable's {c.stable_error_rate:.1%} in "
                        f"the same time slices by {c.excess_error_rate:.1%}, more than "
                        f"{s.rollback_max_error_increase:.1%} (z = {c.z:.1f})")
            if c.stable_p95_s is not None and c.canary_p95_s is not None:
                limit = c.stable_p95_s * s.rollback_max_latency_ratio + s.rollback_latency_slack_s
                if c.canary_p95_s > limit:
                    return (f"canary p95 latency {c.canary_p95_s * 1000:.0f} ms exceeds "
                            f"{s.rollback_max_latency_ratio:g}x stable's {c.stable_p95_s * 1000:.0f} ms "
                            f"+ {s.rollback_latency_slack_s * 1000:.0f} ms")
        self._prune(self.clock())
        shadow = self._shadow()
        if shadow["comparisons"] >= s.rollback_min_requests and shadow["agreement"] < s.rollback_min_agreement:
            return (f"shadow top-1 agreement {shadow['agreement']:.1%} is below the floor "
                    f"{s.rollback_min_agreement:.1%}")
        return None


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def _round(value):
    return round(value, 4) if isinstance(value, float) else value
