#!/usr/bin/env python3
"""Benchmark: /exec through a running sandboxd against the same program run bare, same run.

Starts its own daemon on a free loopback port with a private state directory, runs each
workload N times both ways (interleaved, so machine noise hits both), and prints medians and
the ratio jailed/bare. Usage (as root, after scripts/install.sh or scripts/test.sh):

    .venv/bin/python scripts/bench.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from benchlib import bench_daemon, exec_once

JAIL_PY = "/opt/sandboxd/jail-venv/bin/python3"
WORKLOADS = [
    ("py print(1)", "py", "print(1)", [JAIL_PY, "-c", "print(1)"]),
    ("py numpy+pandas", "py", "import numpy, pandas\nprint(pandas.Series(numpy.arange(10)).sum())",
     [JAIL_PY, "-c", "import numpy, pandas\nprint(pandas.Series(numpy.arange(10)).sum())"]),
    ("py matplotlib png", "py",
     "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1,2])\nplt.savefig('p.png')",
     None),
    ("bash echo", "bash", "echo hi", ["/bin/bash", "-c", "echo hi"]),
]


def bare_once(argv: list[str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env={"MPLBACKEND": "Agg", "HOME": cwd})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ns = ap.parse_args()
    with bench_daemon() as (url, scratch):
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


if __name__ == "__main__":
    main()
