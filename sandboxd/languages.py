"""Per-language recipes: which jail profile runs a language, where its source goes, how it runs.

The source file lives in a per-run directory bound read-only at SOURCE_DIR inside the jail
(on the jail's private /tmp), never among the user's files in /mnt/data.
"""

from __future__ import annotations

import os

import msgspec

from .errors import BadRequest
from .settings import MiB

__all__ = ["Recipe", "SOURCE_DIR", "RECIPES", "ALIASES", "KNOWN_LANGS", "resolve"]

SOURCE_DIR = "/tmp/code"
BIN_DIR = "/tmp/bin"  # a compile-cache entry, read-only
OUT_DIR = "/mnt/data"  # inside a compile step only: its private output tmpfs
JAIL_PYTHON = "/opt/sandboxd/jail-venv/bin/python3"


class Recipe(msgspec.Struct, frozen=True, kw_only=True):
    lang: str
    profile: str  # jail-configs/<profile>.cfg
    source_name: str
    # argv to run; "{src}" is replaced by the source path inside the jail; args follow.
    run: tuple[str, ...]
    # For compiled languages: argv of the compile step, run in its own jail whose /mnt/data is
    # a fresh private output directory (no user files). Its output becomes a compile-cache
    # entry, bound read-only at BIN_DIR for `run` (see sandboxd/compilecache.py).
    compile: tuple[str, ...] = ()
    # Extra environment (KEY=VALUE) on top of the profile's allowlist.
    env: tuple[str, ...] = ()
    # Per-language floors: a runtime that cannot work below these (the JVM's threads, say)
    # gets at least this much whatever the server default (see sessions._limits).
    memory_max_bytes: int | None = None
    pids_max: int | None = None
    # Added to the wall limit for languages that compile first.
    compile_time_s: float = 0.0
    # Host paths the recipe cannot run without (its interpreter or compiler): when one is
    # missing the language answers 400 naming it, instead of a jail that fails to launch.
    requires: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        return [path for path in self.requires if not os.access(path, os.X_OK)]

    def argv(self, args: list[str], memory_max_bytes: int | None = None) -> list[str]:
        return self._fill(self.run, memory_max_bytes) + list(args)

    def compile_argv(self, memory_max_bytes: int | None = None) -> list[str]:
        return self._fill(self.compile, memory_max_bytes)

    def _fill(self, parts: tuple[str, ...], memory_max_bytes: int | None) -> list[str]:
        """{src}: the source path in the jail; {memory_max_bytes}: the run's memory limit (for
        runtimes that cannot see their cgroup, such as the JVM)."""
        src = f"{SOURCE_DIR}/{self.source_name}"
        memory = str(memory_max_bytes or self.memory_max_bytes or 0)
        return [part.replace("{src}", src).replace("{memory_max_bytes}", memory) for part in parts]


NODE = "/usr/bin/node"
# tsx (exact version pinned in scripts/setup-host.sh), bound read-only by the node profile.
TSX_CLI = "/opt/sandboxd/node-tools/node_modules/tsx/dist/cli.mjs"
# The JVM sizes its heap from MaxRAM: inside the jail it cannot see the cgroup limit and would
# size itself from the host's RAM, so a heap-hungry program would be OOM-killed instead of
# getting an OutOfMemoryError. MaxRAM is the run's own memory limit (at least this floor); half
# of it is heap, the other half is left for metaspace, code cache, thread stacks and javac.
JAVA_MEMORY_FLOOR = 1024 * MiB


def _native(*compiler: str, libs: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Compile step writing OUT_DIR/main (libraries after the source, as the linker wants)."""
    return (*compiler, "-o", f"{OUT_DIR}/main", "{src}", *libs)


NATIVE_RUN = (f"{BIN_DIR}/main",)  # the cached binary


_JVM = ("-XX:+UseSerialGC", "-XX:-UsePerfData", "-XX:MaxRAM={memory_max_bytes}", "-XX:MaxRAMPercentage=50")


def _java() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """javac requires a public class to live in a file of its name, so the compile step finds
    the public top-level class (else the first class), compiles it under that name, and records
    it in MAIN_CLASS; the run step starts that class from the cached classes. The class name is
    matched to [A-Za-z0-9_] before it reaches a path or an argv item."""
    javac = "javac " + " ".join(f"-J{opt}" for opt in _JVM)
    public = (r"s/^[[:space:]]*public[[:space:]]\{1,\}\(\(final\|abstract\)[[:space:]]\{1,\}\)*"
              r"class[[:space:]]\{1,\}\([A-Za-z_][A-Za-z0-9_]*\).*/\3/p")
    first = r"s/^.*\bclass[[:space:]]\{1,\}\([A-Za-z_][A-Za-z0-9_]*\).*/\1/p"
    compile_script = (  # one line, so `sandboxd policy show` prints it on one
        f"cls=$(sed -n '{public}' \"$0\" | head -n 1); "
        f'[ -n "$cls" ] || cls=$(sed -n \'{first}\' "$0" | head -n 1); '
        '[ -n "$cls" ] || { echo "no class found in the source" >&2; exit 1; }; '
        'mkdir /tmp/src && ln -s "$0" "/tmp/src/$cls.java" && '
        f'{javac} -d {OUT_DIR} "/tmp/src/$cls.java" && printf %s "$cls" > {OUT_DIR}/MAIN_CLASS'
    )
    java = "java " + " ".join(_JVM)
    run_script = f'exec {java} -cp {BIN_DIR} "$(cat {BIN_DIR}/MAIN_CLASS)" "$@"'
    return ("/bin/sh", "-c", compile_script, "{src}"), ("/bin/sh", "-c", run_script, "java")


JAVA_COMPILE, JAVA_RUN = _java()


RECIPES: dict[str, Recipe] = {
    # py and bash are the daemon's core (its canaries run py); doctor checks their runtime.
    "py": Recipe(lang="py", profile="python", source_name="main.py", run=(JAIL_PYTHON, "{src}")),
    "bash": Recipe(lang="bash", profile="bash", source_name="main.sh", run=("/bin/bash", "{src}")),
    "js": Recipe(lang="js", profile="node", source_name="main.js", run=(NODE, "{src}"), requires=(NODE,)),
    # tsx runs a second node for the loader plus esbuild's service process: more threads.
    "ts": Recipe(lang="ts", profile="node", source_name="main.ts", run=(NODE, TSX_CLI, "{src}"),
                 requires=(NODE, TSX_CLI), pids_max=256),
    "c": Recipe(lang="c", profile="native", source_name="main.c", run=NATIVE_RUN,
                compile=_native("/usr/bin/gcc", "-O2", "-pipe", libs=("-lm",)),
                requires=("/usr/bin/gcc",), compile_time_s=10.0),
    "cpp": Recipe(lang="cpp", profile="native", source_name="main.cpp",
                  run=NATIVE_RUN,
                  compile=_native("/usr/bin/g++", "-O2", "-pipe", "-std=gnu++20", libs=("-lm",)),
                  requires=("/usr/bin/g++",), compile_time_s=20.0),
    # Debian's rustc defaults to the 2015 edition; code written today expects 2021.
    "rs": Recipe(lang="rs", profile="native", source_name="main.rs",
                 run=NATIVE_RUN, compile=_native("/usr/bin/rustc", "--edition", "2021", "-C", "opt-level=2"),
                 requires=("/usr/bin/rustc", "/usr/bin/cc"), compile_time_s=20.0, pids_max=256),
    # GOPATH mode on the jail's /tmp: no module download is possible or wanted; GOENV=off so
    # a config file the user left in HOME=/mnt/data does not steer the build. go build and the
    # Go program each start a thread per CPU: hence the pids floor.
    "go": Recipe(lang="go", profile="native", source_name="main.go",
                 run=NATIVE_RUN, compile=_native("/usr/bin/go", "build"),
                 env=("GO111MODULE=off", "GOPATH=/tmp/go", "GOCACHE=/tmp/gocache", "GOENV=off",
                      "GOFLAGS="),
                 requires=("/usr/bin/go",), compile_time_s=20.0, pids_max=256),
    # -O1: Phobos templates make -O2 cost gdc a further 0.7 s even for hello world.
    "d": Recipe(lang="d", profile="native", source_name="main.d",
                run=NATIVE_RUN, compile=_native("/usr/bin/gdc", "-O1", "-pipe"),
                requires=("/usr/bin/gdc",), compile_time_s=20.0),
    "f90": Recipe(lang="f90", profile="native", source_name="main.f90",
                  run=NATIVE_RUN, compile=_native("/usr/bin/gfortran", "-O2", "-pipe"),
                  requires=("/usr/bin/gfortran",), compile_time_s=10.0),
    "java": Recipe(lang="java", profile="java", source_name="Main.java", compile=JAVA_COMPILE, run=JAVA_RUN,
                   requires=("/usr/bin/java", "/usr/bin/javac"), compile_time_s=10.0, pids_max=256,
                   memory_max_bytes=JAVA_MEMORY_FLOOR),
    "php": Recipe(lang="php", profile="php", source_name="main.php", run=("/usr/bin/php", "{src}"),
                  requires=("/usr/bin/php",)),
    "r": Recipe(lang="r", profile="r", source_name="main.R", run=("/usr/bin/Rscript", "{src}"),
                requires=("/usr/bin/Rscript",)),
}

# Every language LibreChat's execute_code tool offers (for a precise error on the others).
KNOWN_LANGS = ("py", "js", "ts", "c", "cpp", "java", "php", "rs", "go", "d", "f90", "r", "bash")

ALIASES = {
    "python": "py", "python3": "py", "py3": "py",
    "javascript": "js", "node": "js", "nodejs": "js",
    "typescript": "ts",
    "c++": "cpp", "cxx": "cpp",
    "rust": "rs", "golang": "go",
    "fortran": "f90", "f95": "f90",
    "sh": "bash", "shell": "bash",
}


def resolve(lang: str) -> Recipe:
    key = lang.strip().lower()
    key = ALIASES.get(key, key)
    recipe = RECIPES.get(key)
    # Checked per request (a few stat calls): installing a toolchain needs no restart.
    if recipe is not None and not recipe.missing():
        return recipe
    if key in KNOWN_LANGS:
        raise BadRequest(f"Unsupported language: {lang} (its runtime is not installed on this server)")
    raise BadRequest(f"Unsupported language: {lang}")
