"""Per-language recipes: which jail profile runs a language, where its source goes, how it runs.

The source file lives in a per-run directory bound read-only at SOURCE_DIR inside the jail
(on the jail's private /tmp), never among the user's files in /mnt/data.
"""

from __future__ import annotations

import os

import msgspec

from .errors import BadRequest

__all__ = ["Recipe", "SOURCE_DIR", "RECIPES", "ALIASES", "KNOWN_LANGS", "resolve"]

SOURCE_DIR = "/tmp/code"
JAIL_PYTHON = "/opt/sandboxd/jail-venv/bin/python3"


class Recipe(msgspec.Struct, frozen=True, kw_only=True):
    lang: str
    profile: str  # jail-configs/<profile>.cfg
    source_name: str
    # argv to run; "{src}" is replaced by the source path inside the jail; args follow.
    run: tuple[str, ...]
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

    def available(self) -> bool:
        return all(os.access(path, os.X_OK) for path in self.requires)

    def missing(self) -> list[str]:
        return [path for path in self.requires if not os.access(path, os.X_OK)]

    def argv(self, args: list[str]) -> list[str]:
        src = f"{SOURCE_DIR}/{self.source_name}"
        return [part.replace("{src}", src) for part in self.run] + list(args)


MiB = 1024 * 1024
NODE = "/usr/bin/node"
# tsx (exact version pinned in scripts/setup-host.sh), bound read-only by the node profile.
TSX_CLI = "/opt/sandboxd/node-tools/node_modules/tsx/dist/cli.mjs"
# The JVM sizes its heap from MaxRAM: inside the jail it cannot see the cgroup limit and would
# size itself from the host's RAM, so a heap-hungry program would be OOM-killed instead of
# getting an OutOfMemoryError. The recipe's memory floor is the MaxRAM it assumes; the other
# half is left for metaspace, code cache, thread stacks and javac.
JAVA_MEMORY_FLOOR = 1024 * MiB


def _compile_and_run(compile_cmd: str) -> tuple[str, ...]:
    """One jail compiles and runs: the source is $0, the user's args are "$@", and the binary
    stays on the jail's private /tmp (never among the user's files in /mnt/data)."""
    return ("/bin/sh", "-c", f'{compile_cmd} && exec /tmp/main "$@"', "{src}")


def _java_run() -> tuple[str, ...]:
    """javac requires a public class to live in a file of its name, and the single-file source
    launcher runs the file's *first* class (so a helper class above `public class Main` breaks
    it). So: find the public top-level class, compile it under that name on /tmp, run it; with
    no public class, the source launcher (which then runs the first class). The class name is
    matched to [A-Za-z0-9_] before it reaches a path or an argv item."""
    jvm = ("-XX:+UseSerialGC", "-XX:-UsePerfData", f"-XX:MaxRAM={JAVA_MEMORY_FLOOR}", "-XX:MaxRAMPercentage=50")
    java = "java " + " ".join(jvm)
    javac = "javac " + " ".join(f"-J{opt}" for opt in jvm)
    pattern = (r"s/^[[:space:]]*public[[:space:]]\{1,\}\(\(final\|abstract\)[[:space:]]\{1,\}\)*"
               r"class[[:space:]]\{1,\}\([A-Za-z_][A-Za-z0-9_]*\).*/\3/p")
    script = (  # one line, so `sandboxd policy show` prints it on one
        f"cls=$(sed -n '{pattern}' \"$0\" | head -n 1); "
        f'[ -n "$cls" ] || exec {java} "$0" "$@"; '
        'mkdir /tmp/src /tmp/classes && ln -s "$0" "/tmp/src/$cls.java" && '
        f'{javac} -d /tmp/classes "/tmp/src/$cls.java" && exec {java} -cp /tmp/classes "$cls" "$@"'
    )
    return ("/bin/sh", "-c", script, "{src}")


RECIPES: dict[str, Recipe] = {
    # py and bash are the daemon's core (its canaries run py); doctor checks their runtime.
    "py": Recipe(lang="py", profile="python", source_name="main.py", run=(JAIL_PYTHON, "{src}")),
    "bash": Recipe(lang="bash", profile="bash", source_name="main.sh", run=("/bin/bash", "{src}")),
    "js": Recipe(lang="js", profile="node", source_name="main.js", run=(NODE, "{src}"), requires=(NODE,)),
    # tsx runs a second node for the loader plus esbuild's service process: more threads.
    "ts": Recipe(lang="ts", profile="node", source_name="main.ts", run=(NODE, TSX_CLI, "{src}"),
                 requires=(NODE, TSX_CLI), pids_max=256),
    "c": Recipe(lang="c", profile="native", source_name="main.c",
                run=_compile_and_run('gcc -O2 -pipe -o /tmp/main "$0" -lm'),
                requires=("/usr/bin/gcc",), compile_time_s=10.0),
    "cpp": Recipe(lang="cpp", profile="native", source_name="main.cpp",
                  run=_compile_and_run('g++ -O2 -pipe -std=gnu++20 -o /tmp/main "$0" -lm'),
                  requires=("/usr/bin/g++",), compile_time_s=20.0),
    # Debian's rustc defaults to the 2015 edition; code written today expects 2021.
    "rs": Recipe(lang="rs", profile="native", source_name="main.rs",
                 run=_compile_and_run('rustc --edition 2021 -C opt-level=2 -o /tmp/main "$0"'),
                 requires=("/usr/bin/rustc", "/usr/bin/cc"), compile_time_s=20.0, pids_max=256),
    # GOPATH mode on the jail's /tmp: no module download is possible or wanted; GOENV=off so
    # a config file the user left in HOME=/mnt/data does not steer the build. go build and the
    # Go program each start a thread per CPU: hence the pids floor.
    "go": Recipe(lang="go", profile="native", source_name="main.go",
                 run=_compile_and_run('go build -o /tmp/main "$0"'),
                 env=("GO111MODULE=off", "GOPATH=/tmp/go", "GOCACHE=/tmp/gocache", "GOENV=off",
                      "GOFLAGS="),
                 requires=("/usr/bin/go",), compile_time_s=20.0, pids_max=256),
    # -O1: Phobos templates make -O2 cost gdc a further 0.7 s even for hello world.
    "d": Recipe(lang="d", profile="native", source_name="main.d",
                run=_compile_and_run('gdc -O1 -pipe -o /tmp/main "$0"'),
                requires=("/usr/bin/gdc",), compile_time_s=20.0),
    "f90": Recipe(lang="f90", profile="native", source_name="main.f90",
                  run=_compile_and_run('gfortran -O2 -pipe -o /tmp/main "$0"'),
                  requires=("/usr/bin/gfortran",), compile_time_s=10.0),
    "java": Recipe(lang="java", profile="java", source_name="Main.java", run=_java_run(),
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
    if recipe is not None and recipe.available():
        return recipe
    if key in KNOWN_LANGS:
        raise BadRequest(f"Unsupported language: {lang} (its runtime is not installed on this server)")
    raise BadRequest(f"Unsupported language: {lang}")
