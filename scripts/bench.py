#!/usr/bin/env python3
"""Benchmark: /exec through a running sandboxd against the same program run bare, same run.

Starts its own daemon on a free loopback port with a private state directory, runs each
workload N times both ways (interleaved, so machine noise hits both), and prints medians and
the ratio jailed/bare. Usage (as root, after scripts/install.sh or scripts/test.sh):

    .venv/bin/python scripts/bench.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

JAIL_PY = "/opt/sandboxd/jail-venv/bin/python3"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = [
    ("py print(1)", "py", "print(1)", [JAIL_PY, "-c", "print(1)"]),
    ("py numpy+pandas", "py", "import numpy, pandas\nprint(pandas.Series(numpy.arange(10)).sum())",
     [JAIL_PY, "-c", "import numpy, pandas\nprint(pandas.Series(numpy.arange(10)).sum())"]),
    ("py matplotlib png", "py",
     "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1,2])\nplt.savefig('p.png')",
     None),
    ("bash echo", "bash", "echo hi", ["/bin/bash", "-c", "echo hi"]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exec_once(url: str, lang: str, code: str) -> float:
    body = json.dumps({"lang": lang, "code": code}).encode()
    req = urllib.request.Request(url + "/exec", data=body, headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    elapsed = time.perf_counter() - t
    if reply["status"] != "ok":
        raise SystemExit(f"jailed run failed: {reply['stderr'][-500:]}")
    return elapsed


def bare_once(argv: list[str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env={"MPLBACKEND": "Agg", "HOME": cwd})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ns = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sandboxd-bench-", dir="/tmp")
    os.chmod(work, 0o711)
    port = free_port()
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as fh:
        fh.write(f'state_dir = "{work}/state"\njail_configs_dir = "{REPO}/jail-configs"\n'
                 f'cgroup_name = "sandboxd-bench-{os.getpid()}"\nport = {port}\n')
    daemon = subprocess.Popen([sys.executable, "-m", "sandboxd", "serve", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        scratch = os.path.join(work, "bare")
        os.mkdir(scratch)
        print(f"runs per cell: {ns.runs}; medians in ms; machine: {os.cpu_count()} cores")
        print("| workload | bare | sandboxd /exec | ratio |")
        print("|---|---|---|---|")
        for label, lang, code, bare_argv in WORKLOADS:
            argv = bare_argv or [JAIL_PY, "-c", code]
            bare, jailed = [], []
            exec_once(url, lang, code)  # warm the page cache for both
            bare_once(argv, scratch)
            for _ in range(ns.runs):
                bare.append(bare_once(argv, scratch))
                jailed.append(exec_once(url, lang, code))
            b, j = statistics.median(bare) * 1000, statistics.median(jailed) * 1000
            print(f"| {label} | {b:.1f} | {j:.1f} | {j / b:.2f}x |")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
