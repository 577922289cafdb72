"""Per-language recipes: which jail profile runs a language, where its source goes, how it runs.

The source file lives in a per-run directory bound read-only at SOURCE_DIR inside the jail
(on the jail's private /tmp), never among the user's files in /mnt/data.
"""

from __future__ import annotations

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

    def argv(self, args: list[str]) -> list[str]:
        src = f"{SOURCE_DIR}/{self.source_name}"
        return [part.replace("{src}", src) for part in self.run] + list(args)


RECIPES: dict[str, Recipe] = {
    "py": Recipe(lang="py", profile="python", source_name="main.py", run=(JAIL_PYTHON, "{src}")),
    "bash": Recipe(lang="bash", profile="bash", source_name="main.sh", run=("/bin/bash", "{src}")),
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
    if recipe is not None:
        return recipe
    if key in KNOWN_LANGS:
        raise BadRequest(f"Unsupported language: {lang} (its runtime is not installed on this server)")
    raise BadRequest(f"Unsupported language: {lang}")
