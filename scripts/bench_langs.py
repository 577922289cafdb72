#!/usr/bin/env python3
"""Per-language benchmark: cold compile+run through /exec against the bare toolchain doing the
same outside the jail, and a compile-cache hit against the cold run, in one run.

Starts its own daemon on a free loopback port (private state and cache directories). Cold runs
get a unique source each time (a comment with a counter), so every one compiles; hits repeat one
source. Bare runs execute the recipe's own compile and run commands on the host, with the jail
paths mapped to a scratch directory. Medians in ms. Usage (as root, after scripts/test.sh):

    .venv/bin/python scripts/bench_langs.py [--runs 5] [--langs c,cpp,...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import bench_daemon, exec_once  # noqa: E402
from sandboxd.languages import BIN_DIR, OUT_DIR, RECIPES, SOURCE_DIR  # noqa: E402

HELLO = {
    "py": ("print('hello', {n})", "#"),
    "bash": ("echo hello {n}", "#"),
    "js": ("console.log('hello', {n});", "//"),
    "ts": ("const n: number = {n};\nconsole.log('hello', n);", "//"),
    "c": ('#include <stdio.h>\nint main(void) {{ printf("hello %d\\n", {n}); return 0; }}', "//"),
    "cpp": ('#include <iostream>\nint main() {{ std::cout << "hello " << {n} << std::endl; }}', "//"),
    "java": ('public class Main {{ public static void main(String[] a) {{ System.out.println("hello " + {n}); }} }}',
             "//"),
    "php": ("<?php echo 'hello ', {n}, PHP_EOL;", "//"),
    "rs": ('fn main() {{ println!("hello {{}}", {n}); }}', "//"),
    "go": ('package main\nimport "fmt"\nfunc main() {{ fmt.Println("hello", {n}) }}', "//"),
    "d": ('import std.stdio;\nvoid main() {{ writeln("hello ", {n}); }}', "//"),
    "f90": ("program hello\n  print *, 'hello', {n}\nend program hello", "!"),
    "r": ("cat('hello', {n}, '\\n')", "#"),
}


def source(lang: str, n: int, unique: str = "") -> str:
    body, comment = HELLO[lang]
    return body.format(n=n) + (f"\n{comment} {unique}\n" if unique else "\n")


def bare_once(lang: str, code: str, scratch: str) -> float:
    """The recipe's own commands on the host, jail paths mapped into a fresh scratch dir."""
    recipe = RECIPES[lang]
    work = tempfile.mkdtemp(dir=scratch)
    paths = {SOURCE_DIR: f"{work}/code", OUT_DIR: f"{work}/out", BIN_DIR: f"{work}/out", "/tmp/": f"{work}/tmp/"}
    for d in ("code", "out", "tmp"):
        os.mkdir(os.path.join(work, d))

    pattern = re.compile("|".join(re.escape(k) for k in sorted(paths, key=len, reverse=True)))

    def mapped(parts: list[str]) -> list[str]:
        return [pattern.sub(lambda m: paths[m.group(0)], p) for p in parts]

    with open(os.path.join(work, "code", recipe.source_name), "w") as fh:
        fh.write(code)
    env = {"PATH": "/usr/bin:/bin", "HOME": f"{work}/out", "TMPDIR": f"{work}/tmp", "LANG": "C.UTF-8"}
    env.update(dict(kv.split("=", 1) for kv in mapped(list(recipe.env))))
    t = time.perf_counter()
    if recipe.compile:
        subprocess.run(mapped(recipe.compile_argv()), cwd=f"{work}/out", env=env, check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(mapped(recipe.argv([])), cwd=f"{work}/out", env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    shutil.rmtree(work, ignore_errors=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--langs", default=",".join(HELLO))
    ns = ap.parse_args()
    with bench_daemon() as (url, scratch):
        print(f"runs per cell: {ns.runs}; medians in ms; {os.cpu_count()} cores")
        print("| lang | bare toolchain | /exec cold | cold / bare | /exec cache hit | hit / cold |")
        print("|---|---|---|---|---|---|")
        counter = 0
        for lang in ns.langs.split(","):
            hit_src = source(lang, 7)
            exec_once(url, lang, hit_src, 'hello')  # warm page cache and fill the entry
            bare_once(lang, hit_src, scratch)
            bare, cold, hit = [], [], []
            for _ in range(ns.runs):
                counter += 1
                unique = source(lang, 7, f"run {counter} {time.time_ns()}")
                bare.append(bare_once(lang, unique, scratch))
                cold.append(exec_once(url, lang, unique, 'hello'))
                hit.append(exec_once(url, lang, hit_src, 'hello'))
            b, c, h = (statistics.median(x) * 1000 for x in (bare, cold, hit))
            compiled = bool(RECIPES[lang].compile)
            print(f"| {lang} | {b:.0f} | {c:.0f} | {c / b:.2f}x | {h:.0f} | "
                  + (f"{h / c:.2f}x |" if compiled else "(no compile step) |"))


if __name__ == "__main__":
    main()
