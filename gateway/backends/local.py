"""The embedded backend: the same SavedModel signatures, loaded in-process with TensorFlow."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.backends.base import (
    GRADCAM,
    Backend,
    Explanation,
    ModelConfig,
    Prediction,
    Target,
    explanation_from,
    load_failed,
)
from gateway.errors import DeadlineExceeded, GatewayError, InvalidParameter, NotFound

# Before TensorFlow loads (it is imported in start()). Without an NVIDIA driver (no /dev/nvidiactl) its CUDA probe
# can only fail, and it logs that at ERROR level ("failed call to cuInit") on every CPU start: hide ERROR too then.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")


class LocalBackend(Backend):
    """Holds the configured versions as loaded SavedModels; labels are resolved by the caller."""

    applies_config_locally = True

    def __init__(self, models_dir, threads: int = 2):
        super().__init__(models_dir)
        self._loaded: dict[tuple[str, int], object] = {}
        self._states: dict[tuple[str, int], str] = {}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tf")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        import tensorflow  # noqa: F401  (import once, up front, not inside the first request)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _model(self, model: str, version: int):
        loaded = self._loaded.get((model, version))
        if loaded is None:
            raise NotFound(f"model {model!r} version {version} is not loaded")
        return loaded

    async def signatures(self, model: str, version: int) -> frozenset[str]:
        return frozenset(self._model(model, version).signatures)

    def _signature(self, target: Target, name: str):
        model = self._model(target.model, target.version)
        if name not in model.signatures:
            raise NotFound(f"model {target.model!r} version {target.version} has no {name!r} signature; re-export it")
        return model.signatures[name]

    async def _run(self, fn, timeout: float):
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._pool, fn), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"the model did not answer within {timeout:g} s") from None

    async def predict(self, images: np.ndarray, target: Target, timeout: float) -> Prediction:
        signature = self._signature(target, "serving_default")
        out = await self._run(lambda: signature(images=images)["probabilities"].numpy(), timeout)
        return Prediction(target.version, out)

    async def explain(self, images: np.ndarray, class_index: np.ndarray, target: Target, timeout: float,
                      signature: str = GRADCAM) -> Explanation:
        import tensorflow as tf

        fn = self._signature(target, signature)

        def call():
            try:
                out = fn(images=images, class_index=class_index.astype(np.int32))
            except tf.errors.InvalidArgumentError as exc:
                raise InvalidParameter(exc.message.splitlines()[0]) from None
            return {k: v.numpy() for k, v in out.items()}

        return explanation_from(target.version, await self._run(call, timeout))

    async def version_states(self, model: str) -> dict[int, str]:
        return {v: s for (m, v), s in self._states.items() if m == model}

    async def apply_config(self, configs: list[ModelConfig], timeout: float) -> None:
        """Load new versions first, then drop the ones no longer listed (availability-preserving, as TF Serving).

        A dropped version's object stays alive while in-flight calls hold its signature, so they finish normally.
        """
        import tensorflow as tf

        async with self._lock:
            wanted = {(c.name, v) for c in configs for v in c.versions}
            for key in sorted(wanted - set(self._loaded)):
                path = self.models_dir / key[0] / str(key[1])
                if not (path / "saved_model.pb").is_file():
                    raise NotFound(f"model {key[0]!r} has no exported version {key[1]} under {self.models_dir}")
                self._states[key] = "LOADING"
                try:
                    self._loaded[key] = await self._run(lambda p=path: tf.saved_model.load(str(p)), timeout)
                except Exception as exc:  # a broken SavedModel: the loader's own reason, at once
                    self._states.pop(key, None)
                    if isinstance(exc, GatewayError):
                        raise
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise load_failed(key[0], key[1], reason) from exc
                except BaseException:
                    self._states.pop(key, None)
                    raise
                self._states[key] = "AVAILABLE"
            for key in set(self._loaded) - wanted:
                del self._loaded[key]
                self._states[key] = "END"
