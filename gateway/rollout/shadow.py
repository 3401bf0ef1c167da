"""Shadow traffic: stable requests mirrored to the canary in the background through a bounded queue."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from gateway.backends.base import Target
from gateway.errors import GatewayError

log = logging.getLogger("gateway.shadow")


class ShadowMirror:
    """Never delays or fails the caller: a full queue drops the mirror (counted), errors only count."""

    def __init__(self, metrics, monitor, queue_size: int, workers: int = 2):
        self.metrics = metrics
        self.monitor = monitor
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.workers = workers
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def submit(self, core, canary: Target, images: np.ndarray, stable_result) -> None:
        try:
            self.queue.put_nowait((core, canary, images, stable_result.version,
                                   stable_result.probabilities.argmax(axis=1)))
        except asyncio.QueueFull:
            self.metrics.shadow.labels(canary.model, "dropped").inc()

    async def _work(self) -> None:
        while True:
            core, canary, images, stable_version, stable_top1 = await self.queue.get()
            try:
                result = await core._predict_batch(canary, images)
            except GatewayError as exc:
                self.metrics.shadow.labels(canary.model, "error").inc()
                self.monitor.observe("canary", None, failed=True)  # an error rate sample, not a latency
                log.debug("shadow request failed: %s", exc.message)
                continue
            except Exception:  # a mirror must never take the worker down
                self.metrics.shadow.labels(canary.model, "error").inc()
                log.exception("shadow request failed")
                continue
            self.metrics.shadow.labels(canary.model, "completed").inc()
            self.monitor.observe("canary", None, failed=False)
            for agree in result.probabilities.argmax(axis=1) == stable_top1:
                self.monitor.record_agreement(bool(agree))
                self.metrics.shadow_agreement.labels(canary.model, str(stable_version), str(result.version),
                                                     str(bool(agree)).lower()).inc()
