"""/metrics after real runs in real jails: counters move by what was done, limits show up as
their own statuses, histograms observe, gauges read live state, and no ID is ever exported."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandboxd.http import STORE
from sandboxd.settings import MiB

pytestmark = pytest.mark.jail

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
KEY = "metrics-test-key-" + "k" * 24
MEMORY_HOG = "chunks = []\nwhile True:\n    chunks.append(b'x' * (4 * 1024 * 1024))\n"


async def scrape(client: Any, path: str = "/metrics", **headers: str) -> tuple[str, Samples]:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


async def test_metrics_after_real_runs(make_client: Any) -> None:
    client = await make_client(limits={"memory_max_bytes": 64 * MiB}, storage={"sessions_max": 4})
    store = client.server.app[STORE]
    _, before = await scrape(client)
    ids: list[str] = []

    async def run(code: str, lang: str = "py", **extra: Any) -> dict[str, Any]:
        resp = await client.post("/exec", json={"lang": lang, "code": code, **extra})
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        ids.append(body["session_id"])
        ids.extend(f["id"] for f in body["files"])
        return body

    assert (await run("open('/mnt/data/out.txt', 'w').write('x' * 5000); print(1)"))["status"] == "ok"
    assert (await run("echo hi", lang="bash"))["status"] == "ok"
    assert (await run("raise SystemExit(3)"))["status"] == "error"
    assert (await run("import time\ntime.sleep(30)", timeout=1000))["status"] == "timeout"
    assert (await run(MEMORY_HOG))["status"] == "oom"
    form = aiohttp.FormData()
    form.add_field("file", b"a,b\n1,2\n", filename="in.csv")
    resp = await client.post("/upload", data=form)
    up = await resp.json()
    ids += [up["session_id"]] + [f["fileId"] for f in up["files"]]
    # Refusals: malformed JSON, an unknown file, an unknown route.
    assert (await client.post("/exec", data=b"{nope", headers={"Content-Type": "application/json"})).status == 400
    assert (await client.get(f"/download/{ids[0]}/{'x' * 21}")).status == 404
    assert (await client.get("/no/such/route")).status == 404

    text, after = await scrape(client, "/v1/metrics")
    assert delta(before, after, "sandboxd_runs_total", language="py", status="ok") == 1
    assert delta(before, after, "sandboxd_runs_total", language="bash", status="ok") == 1
    assert delta(before, after, "sandboxd_runs_total", language="py", status="error") == 1
    assert delta(before, after, "sandboxd_runs_total", language="py", status="timeout") == 1
    assert delta(before, after, "sandboxd_runs_total", language="py", status="oom") == 1
    assert delta(before, after, "sandboxd_runs_total", language="js", status="ok") == 0
    assert delta(before, after, "sandboxd_run_duration_seconds_count", language="py") == 4
    assert delta(before, after, "sandboxd_run_duration_seconds_count", language="bash") == 1
    # The timeout run alone lasted about a second.
    assert delta(before, after, "sandboxd_run_duration_seconds_sum", language="py") >= 0.9
    assert delta(before, after, "sandboxd_run_duration_seconds_bucket", language="py", le="+Inf") == 4
    assert delta(before, after, "sandboxd_queue_wait_seconds_count") == 5
    # Six sessions were made (five runs, one upload) with room for four: the oldest went.
    assert delta(before, after, "sandboxd_session_evictions_total", reason="lru_sessions") == 2
    assert val(after, "sandboxd_sessions") == len(store.sessions) == 4
    assert val(after, "sandboxd_sessions_storage_bytes") == store.total_usage() > 0
    assert val(after, "sandboxd_runs_active") == 0 and val(after, "sandboxd_runs_queued") == 0
    assert delta(before, after, "sandboxd_http_requests_rejected_total", route="/exec", status="400") == 1
    assert delta(before, after, "sandboxd_http_requests_rejected_total", route="/download/{sid}/{fid}",
                 status="404") == 1
    assert delta(before, after, "sandboxd_http_requests_rejected_total", route="unmatched", status="404") == 1
    assert delta(before, after, "sandboxd_http_requests_total", route="/exec", status="200") == 5
    assert val(after, "sandboxd_ready") == 1
    canaries = {dict(labels)["layer"]: v for (name, labels), v in after.items() if name == "sandboxd_canary_ok"}
    assert len(canaries) >= 8 and set(canaries.values()) == {1.0}, canaries
    build = [dict(labels) for (name, labels), _ in after.items() if name == "sandboxd_build_info"]
    assert build and build[0]["version"] and build[0]["python"]
    for secret in ids:
        assert secret not in text
    assert KEY not in text

    # An idle session past its TTL is swept as a ttl eviction.
    oldest = min(store.sessions.values(), key=lambda s: s.last_used)
    oldest.last_used = time.time() - store.settings.storage.session_ttl_s - 1
    await store.sweep()
    _, swept = await scrape(client)
    assert delta(after, swept, "sandboxd_session_evictions_total", reason="ttl") == 1
    assert val(swept, "sandboxd_sessions") == 3


async def test_metrics_can_require_the_api_credentials(make_client: Any) -> None:
    guarded = await make_client(auth={"mode": "api_key", "api_keys": [KEY]}, metrics_require_auth=True)
    assert (await guarded.get("/metrics")).status == 401
    assert (await guarded.get("/v1/metrics", headers={"X-API-Key": "wrong"})).status == 401
    text, _ = await scrape(guarded, **{"X-API-Key": KEY})
    assert "sandboxd_runs_total" in text and KEY not in text


async def test_metrics_are_open_by_default_even_when_the_api_needs_a_key(make_client: Any) -> None:
    open_ = await make_client(auth={"mode": "api_key", "api_keys": [KEY]})
    text, _ = await scrape(open_)
    assert KEY not in text
    assert (await open_.post("/exec", json={"lang": "py", "code": "1"})).status == 401
