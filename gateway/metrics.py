"""Prometheus metrics, in a registry per app so that several gateways (tests) can live in one process."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        r = CollectorRegistry()
        self.registry = r  # what /metrics exposes
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: expose the sum over all of them
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)
        self.requests = Counter("gateway_requests", "Requests by route, model version and status",
                                ["route", "model", "version", "status"], registry=r)
        self.latency = Histogram("gateway_request_latency_seconds", "End-to-end latency by route and model version",
                                 ["route", "model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_latency = Histogram("gateway_backend_latency_seconds", "Backend call latency by signature",
                                         ["signature"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("gateway_batch_size", "Images per backend call", ["signature"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.inflight = Gauge("gateway_inflight_requests", "Requests being served", registry=r,
                              multiprocess_mode="livesum")
        self.rejected = Counter("gateway_rejected", "Requests and connections refused or shed before reaching the "
                                "backend: overloaded, too_many_connections, head_timeout, head_too_large, "
                                "body_timeout", ["reason"], registry=r)
        self.responses = Counter("gateway_responses", "Every HTTP answer by route template, status and error code",
                                 ["route", "status", "code"], registry=r)
        self.grpc_responses = Counter("gateway_grpc_responses", "Every gRPC answer by method and status code",
                                      ["method", "code"], registry=r)
        self.shadow = Counter("gateway_shadow", "Shadow (mirrored) requests by outcome", ["model", "outcome"],
                              registry=r)
        self.shadow_agreement = Counter("gateway_shadow_agreement", "Shadow comparisons of top-1 classes",
                                        ["model", "stable_version", "canary_version", "agree"], registry=r)
        self.rollbacks = Counter("gateway_rollout_automatic_rollbacks", "Rollouts aborted automatically",
                                 ["model", "reason"], registry=r)
        self.canary_weight = Gauge("gateway_rollout_canary_weight_percent", "Share of traffic sent to the canary",
                                   ["model"], registry=r, multiprocess_mode="mostrecent")
