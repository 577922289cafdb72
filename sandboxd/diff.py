"""What a run changed in its session directory, as a pure function of what the daemon knew
before and what it saw after (no I/O, no registry: the caller applies the result).

Deletions come only from names that are really gone: a known name the walk did not list (a
hidden name, a walk cut short at its entry budget, a file that became a link or too large) was
looked up on its own with lstat, and only "no such file" counts as deleted. LibreChat drops a
file reference only when `deleted_files` names it, so a false entry loses a user's file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

from .workspace import Sig

__all__ = ["ABSENT", "UNSERVABLE", "Probe", "Diff", "diff"]

ABSENT: Literal["absent"] = "absent"  # lstat: no such file (or a parent is not a directory)
UNSERVABLE: Literal["unservable"] = "unservable"  # present, but not a file the daemon serves
# A known name the walk did not list, looked up on its own.
Probe = Sig | Literal["absent", "unservable"]


class Diff(NamedTuple):
    unchanged: list[str]  # known names whose version is still there, byte for byte
    changed: dict[str, Sig]  # new or rewritten servable files, in walk order
    deleted: list[str]  # known names that no longer exist (sorted)
    lost: list[str]  # known names still present but no longer servable: version retired, not deleted


def diff(known: Mapping[str, Sig], found: Mapping[str, Sig], probed: Mapping[str, Probe]) -> Diff:
    """known: name -> signature before the run; found: the walk's servable files; probed: every
    known name missing from `found`, looked up on its own (a name not probed is never deleted)."""
    unchanged: list[str] = []
    changed: dict[str, Sig] = {}
    deleted: list[str] = []
    lost: list[str] = []
    for name, sig in found.items():
        if known.get(name) == sig:
            unchanged.append(name)
        else:
            changed[name] = sig
    for name in sorted(set(known) - set(found)):
        seen = probed.get(name, UNSERVABLE)
        if seen == ABSENT:
            deleted.append(name)
        elif seen == UNSERVABLE:
            lost.append(name)
        elif seen == known[name]:
            unchanged.append(name)  # e.g. a hidden input the run left alone
        else:
            assert isinstance(seen, Sig)
            changed[name] = seen
    return Diff(unchanged, changed, deleted, lost)
