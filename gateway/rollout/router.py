"""Per-request routing: explicit pins win, then a sticky hash of the routing key, then a weighted coin."""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter

from gateway.backends.base import ModelConfig, Target
from gateway.errors import NotFound
from gateway.rollout.state import Phase, RolloutState, RolloutStore

STABLE, CANARY, PINNED = "stable", "canary", "pinned"


def sticky_bucket(model: str, key: str) -> float:
    """A key's fixed position in [0, 100): it is canary while position < weight, so raising the weight only ever
    moves keys from stable to canary, and an unchanged weight always gives the same answer."""
    digest = hashlib.sha256(f"{model}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class Router:
    """Holds the applied model config (set by the synchroniser) and the shared rollout state (re-read on change)."""

    def __init__(self, default_model: str, rollout_store: RolloutStore, poll_s: float = 1.0,
                 rng: random.Random | None = None):
        self.default_model = default_model
        self.rollout_store = rollout_store
        self.poll_s = poll_s
        self.rng = rng or random.Random()
        self.monitor = None  # rollout.monitor.Monitor, set by the app
        self.shadow = None  # rollout.shadow.ShadowMirror, set by the app
        self.on_observe = None  # called after each routed observation (automatic rollback check)
        self.inflight: Counter[tuple[str, int]] = Counter()
        self._configs: dict[str, ModelConfig] = {}
        self._state: RolloutState | None = None
        self._checked = 0.0

    def set_configs(self, configs: list[ModelConfig]) -> None:
        self._configs = {c.name: c for c in configs}

    def set_state(self, state: RolloutState | None) -> None:
        self._state = state
        self._checked = time.monotonic()

    @property
    def state(self) -> RolloutState | None:
        if time.monotonic() - self._checked >= self.poll_s:
            self.set_state(self.rollout_store.read())
        return self._state

    def configs(self) -> list[ModelConfig]:
        return list(self._configs.values())

    def models(self) -> list[str]:
        return list(self._configs)

    def config(self, model: str) -> ModelConfig:
        if model not in self._configs:
            raise NotFound(f"unknown model {model!r}; served: {', '.join(self._configs) or 'none'}")
        return self._configs[model]

    def route(self, pin) -> tuple[Target, str]:
        """(target, role) for a request: role is `pinned`, `stable` or `canary`."""
        config = self.config(pin.model or self.default_model)
        if pin.version is not None:
            if pin.version not in config.versions:
                raise NotFound(f"model {config.name!r} has no served version {pin.version}; "
                               f"served: {', '.join(map(str, config.versions))}")
            return Target(config.name, pin.version), PINNED
        if pin.label is not None:
            if pin.label not in config.labels:
                raise NotFound(f"model {config.name!r} has no label {pin.label!r}; labels: "
                               f"{', '.join(config.labels) or 'none'}")
            return Target(config.name, config.labels[pin.label], pin.label), PINNED
        role = self._split(config, pin.routing_key)
        if role in config.labels:
            return Target(config.name, config.labels[role], role), role
        if not config.versions:
            raise NotFound(f"model {config.name!r} has no served version")
        return Target(config.name, max(config.versions)), STABLE  # no labels at all: the newest listed version

    def reachable(self, pin) -> tuple[ModelConfig, list[int]]:
        """The versions that may serve (or, as shadow, also run) a request with this pin, without drawing the split:
        what admission must price it at."""
        config = self.config(pin.model or self.default_model)
        if pin.version is not None or pin.label is not None:
            return config, [self.route(pin)[0].version]
        stable = config.labels.get(STABLE, max(config.versions) if config.versions else None)
        canary = config.labels.get(CANARY) if self._live(config) else None
        return config, [v for v in (stable, canary) if v is not None]

    def _live(self, config: ModelConfig) -> RolloutState | None:
        """The rollout state while one runs on this model (canary labelled, taking traffic or shadow)."""
        state = self.state
        return state if state is not None and state.model == config.name and state.phase == Phase.running else None

    def _split(self, config: ModelConfig, routing_key: str | None) -> str:
        state = self._live(config)
        if state is None or state.weight <= 0 or CANARY not in config.labels:
            return STABLE
        if routing_key:
            return CANARY if sticky_bucket(config.name, routing_key) < state.weight else STABLE
        return CANARY if self.rng.random() * 100 < state.weight else STABLE

    def observe(self, role: str, elapsed: float, failed: bool) -> None:
        if self.monitor is not None and role in (STABLE, CANARY) and self._running():
            self.monitor.observe(role, elapsed, failed)
            if self.on_observe is not None:
                self.on_observe()

    def _running(self) -> bool:
        return self._state is not None and self._state.phase == Phase.running

    def mirror(self, core, target: Target, images, result) -> None:
        """Stable traffic may be mirrored to the canary in the background (never delaying this request)."""
        state = self._state
        if (self.shadow is None or state is None or state.phase != Phase.running or state.shadow <= 0
                or target.label != STABLE or self.rng.random() * 100 >= state.shadow):
            return
        canary = self._configs[target.model].labels.get(CANARY) if target.model in self._configs else None
        if canary is not None and canary != result.version:
            self.shadow.submit(core, Target(target.model, canary, CANARY), images, result)
