"""Shared by the benchmark scripts: a private daemon on a free loopback port, and one /exec."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def bench_daemon() -> Iterator[tuple[str, str]]:
    """(base URL, scratch dir) of a daemon with its own state, cache and cgroup; stopped after."""
    work = tempfile.mkdtemp(prefix="sandboxd-bench-", dir="/tmp")
    os.chmod(work, 0o711)
    port = free_port()
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as fh:
        fh.write(f'state_dir = "{work}/state"\ncompile_cache_dir = "{work}/cache"\n'
                 f'jail_configs_dir = "{REPO}/jail-configs"\ncgroup_name = "sandboxd-bench-{os.getpid()}"\n'
                 f"port = {port}\n")
    daemon = subprocess.Popen([sys.executable, "-m", "sandboxd", "serve", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if daemon.poll() is not None:
                    raise SystemExit("the daemon did not start: run `sandboxd doctor`") from None
                time.sleep(0.1)
        scratch = os.path.join(work, "bare")
        os.mkdir(scratch)
        yield url, scratch
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def exec_once(url: str, lang: str, code: str, expect: str = "") -> float:
    """Seconds for one /exec round trip; exits if the run did not succeed."""
    req = urllib.request.Request(url + "/exec", data=json.dumps({"lang": lang, "code": code}).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        reply = json.loads(r.read())
    elapsed = time.perf_counter() - t
    if reply["status"] != "ok" or expect not in reply["stdout"]:
        raise SystemExit(f"{lang}: jailed run failed: {reply['stderr'][-800:]}")
    return elapsed
