"""The ceiling: the SavedModel's `serving_default` called in-process, no HTTP, no decoding, no batching logic."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench.client import sample_files


class Signature:
    """`serving_default` of one version, called exactly as gateway/backends/local.py calls it."""

    def __init__(self, version_dir: Path):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from gateway.backends.base import VersionMeta
        from gateway.decoding import decode_image, resize

        size = VersionMeta.read(version_dir).input_size
        # the real sample tiles, decoded and resized as the gateway does it, once
        self.samples = [resize(decode_image(f.read_bytes(), 10**8), size) for f in sample_files()]
        self.fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def tiles(self, count: int) -> np.ndarray:
        """`count` sample tiles as one uint8 batch."""
        return np.stack([self.samples[i % len(self.samples)] for i in range(count)])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.fn(images=images)["probabilities"].numpy()

    def throughput(self, batch: int, seconds: float, warmup: int = 10) -> dict:
        """Images per second at a fixed batch size, calling back to back for `seconds`."""
        images = self.tiles(batch)
        for _ in range(warmup):
            self(images)
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            self(images)
            calls += 1
        return {"batch_size": batch, "calls": calls, "seconds": round(elapsed, 3),
                "images_per_s": round(calls * batch / elapsed, 2), "ms_per_call": round(elapsed / calls * 1000, 3)}

    def latency(self, batch: int, calls: int, warmup: int = 20) -> dict:
        """Median and p99 of single calls (ms)."""
        images = self.tiles(batch)
        for _ in range(warmup):
            self(images)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            self(images)
            times.append((time.perf_counter() - started) * 1000)
        return {"batch_size": batch, "calls": calls, "p50_ms": round(statistics.median(times), 3),
                "p99_ms": round(float(np.percentile(times, 99)), 3)}
