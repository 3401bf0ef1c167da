"""The rollout state machine: start -> (set-weight)* -> promote | abort, persisted step by step.

Every transition writes rollout.json (phase first) and models.runtime.config (atomically) before telling the backend,
so a crash at any point leaves a config TensorFlow Serving can load at restart and a phase that says what to finish;
`resume()` finishes it on the next start. TF Serving only lets a label point at an AVAILABLE version, so a new
version is listed first, waited for, and labelled in a second reload.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import time
from contextlib import asynccontextmanager

import numpy as np

from gateway.backends.base import GRADCAM, GRADCAM_MULTILAYER, Backend, ModelConfig, Target
from gateway.errors import Conflict, GatewayError, InvalidParameter, NotFound
from gateway.model_config import ConfigStore
from gateway.rollout.monitor import Monitor
from gateway.rollout.router import CANARY, STABLE, Router
from gateway.rollout.state import Phase, RolloutState, RolloutStore
from gateway.settings import Settings

log = logging.getLogger("gateway.rollout")


class RolloutManager:
    def __init__(self, settings: Settings, backend: Backend, configs: ConfigStore, store: RolloutStore,
                 router: Router, monitor: Monitor, metrics):
        self.s = settings
        self.model = settings.model_name
        self.backend = backend
        self.configs = configs
        self.store = store
        self.router = router
        self.monitor = monitor
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._config_mtime: int | None = None
        self._rollback_task: asyncio.Task | None = None
        self._last_check = 0.0

    # ---- shared state -------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _exclusive(self):
        """One transition at a time: in this process (asyncio lock) and across replicas and the CLI (flock)."""
        async with self._lock:
            self.store.lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.store.lock_path, "a") as handle:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise Conflict("another replica holds the rollout lock; try again") from None
                        await asyncio.sleep(0.05)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _config(self) -> ModelConfig:
        for config in self.configs.read(self.model):
            if config.name == self.model:
                return config
        raise NotFound(f"model {self.model!r} is not in {self.configs.path}")

    def _state(self) -> RolloutState:
        state = self.store.read()
        if state is not None:
            return state.model_copy(deep=True)
        config = self._config()
        return RolloutState(model=self.model, stable=config.labels.get(STABLE, max(config.versions)))

    def _save(self, state: RolloutState, event: str, detail: str = "") -> None:
        state.record(event, detail)
        self.store.write(state)
        self.router.set_state(state)
        self.metrics.canary_weight.labels(self.model).set(state.weight if state.phase == Phase.running else 0)
        log.info("rollout %s: %s %s", self.model, event, detail)

    async def _apply(self, versions: set[int], labels: dict[str, int]) -> None:
        """Write models.runtime.config atomically, then make the backend serve exactly that (and wait for AVAILABLE)."""
        others = [c for c in self.configs.read(self.model) if c.name != self.model]
        configs = [*others, ModelConfig(self.model, tuple(sorted(versions)), labels)]
        self.configs.write(configs)
        self._config_mtime = self.configs.path.stat().st_mtime_ns
        await self.backend.apply_config(configs, self.s.rollout_load_timeout_s)
        self.router.set_configs(configs)

    async def _drain(self, version: int) -> None:
        """Before unloading: let every replica see the new routing, and this one finish its in-flight requests."""
        await asyncio.sleep(self.s.rollout_poll_s)
        deadline = time.monotonic() + self.s.request_timeout_s
        while self.router.inflight[(self.model, version)] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # ---- operations ---------------------------------------------------------------------------------------------
    async def start(self, version: int, weight: float, shadow: float = 0.0) -> RolloutState:
        _check_percent("weight", weight)
        _check_percent("shadow", shadow)
        async with self._exclusive():
            state = self._state()
            if state.phase != Phase.idle:
                raise Conflict(f"a rollout of version {state.canary} is {state.phase.value}: promote or abort it "
                               "first")
            if version not in self.backend.exported_versions(self.model):
                raise NotFound(f"model {self.model!r} has no exported version {version} under "
                               f"{self.s.models_dir / self.model}")
            if version == state.stable:
                raise Conflict(f"version {version} is already stable")
            state.phase, state.canary, state.weight, state.shadow = Phase.loading, version, weight, shadow
            self._save(state, "start", f"loading version {version} next to stable {state.stable}")
            await self._finish_start(state)
            return state

    async def _warm_up(self, version: int) -> None:
        """One call per signature the version serves, before it takes traffic: its first calls are slow (graph
        set-up), and the latency comparison must judge the model, not its cold start. A version without
        `gradcam_multilayer` is a valid version that answers the fused method 404, not a failed start."""
        h, w = self.backend.meta(self.model, version).input_size
        images = np.zeros((1, h, w, 3), np.uint8)
        target = Target(self.model, version)
        await self.backend.predict(images, target, self.s.rollout_load_timeout_s)
        served = await self.backend.signatures(self.model, version)
        for signature in (s for s in (GRADCAM, GRADCAM_MULTILAYER) if s in served):
            await self.backend.explain(images, np.array([-1], np.int32), target, self.s.rollout_load_timeout_s,
                                       signature)

    async def _finish_start(self, state: RolloutState) -> None:
        try:
            await self._apply({state.stable, state.canary}, {STABLE: state.stable})
            await self._warm_up(state.canary)
            await self._apply({state.stable, state.canary}, {STABLE: state.stable, CANARY: state.canary})
        except GatewayError as exc:
            await self._apply({state.stable}, {STABLE: state.stable})
            failed = state.canary
            state.phase, state.canary, state.weight, state.shadow = Phase.idle, None, 0.0, 0.0
            state.last_outcome = f"start of version {failed} failed: {exc.message}"
            self._save(state, "start failed", exc.message)
            raise
        self.monitor.reset()
        state.phase = Phase.running
        self._save(state, "running", f"canary {state.canary} at {state.weight:g}%, shadow {state.shadow:g}%")

    async def set_weight(self, weight: float, shadow: float | None = None) -> RolloutState:
        _check_percent("weight", weight)
        if shadow is not None:
            _check_percent("shadow", shadow)
        async with self._exclusive():
            state = self._state()
            if state.phase != Phase.running:
                raise Conflict(f"no rollout is running (phase {state.phase.value}); start one first")
            state.weight = weight
            state.shadow = state.shadow if shadow is None else shadow
            self._save(state, "set-weight", f"canary {state.canary} at {weight:g}%, shadow {state.shadow:g}%")
            return state

    async def promote(self) -> RolloutState:
        async with self._exclusive():
            state = self._state()
            if state.phase != Phase.running:
                raise Conflict(f"no rollout is running (phase {state.phase.value}); nothing to promote")
            state.phase = Phase.promoting
            self._save(state, "promote", f"stable moves from {state.stable} to {state.canary}")
            await self._finish_promote(state)
            return state

    async def _finish_promote(self, state: RolloutState) -> None:
        old, new = state.stable, state.canary
        await self._apply({old, new}, {STABLE: new})
        await self._drain(old)
        await self._apply({new}, {STABLE: new})
        state.phase, state.stable, state.canary, state.weight, state.shadow = Phase.idle, new, None, 0.0, 0.0
        state.last_outcome = f"promoted version {new} (was {old})"
        self._save(state, "promoted", state.last_outcome)

    async def abort(self, reason: str = "aborted by operator", automatic: bool = False) -> RolloutState:
        async with self._exclusive():
            state = self._state()
            if state.phase not in (Phase.loading, Phase.running, Phase.aborting):
                raise Conflict(f"no rollout to abort (phase {state.phase.value})")
            state.phase = Phase.aborting
            self._save(state, "abort", reason)
            await self._finish_abort(state, reason, automatic)
            return state

    async def _finish_abort(self, state: RolloutState, reason: str, automatic: bool = False) -> None:
        canary = state.canary
        if canary is not None:
            await self._drain(canary)
        await self._apply({state.stable}, {STABLE: state.stable})
        state.phase, state.canary, state.weight, state.shadow = Phase.idle, None, 0.0, 0.0
        prefix = "rolled back automatically" if automatic else "aborted"
        state.last_outcome = f"{prefix}: version {canary}: {reason}"
        self._save(state, "rolled back" if automatic else "aborted", state.last_outcome)

    async def resume(self) -> str | None:
        """At start-up: finish a transition that a crash interrupted. Returns what was done, for the log."""
        async with self._exclusive():
            state = self._state()
            phase = state.phase
            if phase == Phase.loading:
                await self._finish_start(state)
            elif phase == Phase.promoting:
                await self._finish_promote(state)
            elif phase == Phase.aborting:
                await self._finish_abort(state, "finished after a restart")
            else:
                return None
            message = f"resumed a rollout interrupted while {phase.value}: now {state.phase.value}"
            self._save(state, "resumed", message)
            log.warning(message)
            return message

    # ---- automatic rollback ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Called after routed requests: start an automatic abort when the monitor reports a breach."""
        now = time.monotonic()
        if not self.s.rollback_enabled or now - self._last_check < 0.2:
            return
        self._last_check = now
        if self._rollback_task is not None and not self._rollback_task.done():
            return
        reason = self.monitor.breach()
        if reason is not None:
            log.warning("automatic rollback of %s: %s", self.model, reason)
            self.metrics.rollbacks.labels(self.model, reason.split(" ")[1]).inc()
            self._rollback_task = asyncio.get_running_loop().create_task(self._auto_abort(reason))

    async def _auto_abort(self, reason: str) -> None:
        try:
            await self.abort(reason, automatic=True)
        except Conflict:
            pass  # another replica (or an operator) finished the rollout first
        except GatewayError:
            log.exception("automatic rollback failed")

    # ---- replica synchronisation ------------------------------------------------------------------------------
    async def sync(self, force: bool = False) -> None:
        """Apply the runtime model config to this replica if another replica (or the CLI) changed it."""
        if force:
            self.configs.seed()
        try:
            mtime = self.configs.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if not force and mtime == self._config_mtime:
            self.router.state  # noqa: B018  (re-reads rollout.json when due)
            return
        configs = self.configs.read(self.model)
        if self.backend.applies_config_locally:
            await self.backend.apply_config(configs, self.s.rollout_load_timeout_s)
        self.router.set_configs(configs)
        self.router.set_state(self.store.read())
        self._config_mtime = mtime

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.s.rollout_poll_s)
            if self._lock.locked():
                continue
            try:
                await self.sync()
            except GatewayError as exc:
                log.warning("could not apply the shared model config: %s", exc.message)
            except Exception:
                log.exception("config sync failed")

    def status(self) -> dict:
        state = self._state()
        return {
            **state.model_dump(mode="json"),
            "live": self.monitor.stats(),
            "per_version": _per_version(self.metrics, self.model),
            "thresholds": {k: getattr(self.s, k) for k in (
                "rollback_enabled", "rollback_window_s", "rollback_min_requests", "rollback_max_error_increase",
                "rollback_max_latency_ratio", "rollback_latency_slack_s", "rollback_min_agreement")},
        }


def _check_percent(name: str, value: float) -> None:
    if not 0 <= value <= 100:
        raise InvalidParameter(f"{name} must be between 0 and 100, got {value:g}")


def _per_version(metrics, model: str) -> dict:
    """Request counts by version and status, read from the Prometheus counters (the same numbers /metrics shows)."""
    out: dict[str, dict[str, float]] = {}
    for family in metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["model"] == model:
                per = out.setdefault(sample.labels["version"], {})
                per[sample.labels["status"]] = per.get(sample.labels["status"], 0) + sample.value
    return out

