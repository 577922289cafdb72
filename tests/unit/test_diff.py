"""The pure diff: deletions only from names really absent."""

from __future__ import annotations

from sandboxd.diff import ABSENT, UNSERVABLE, diff
from sandboxd.workspace import Sig

A = Sig(1, 10, 100, 100)
B = Sig(2, 20, 200, 200)


def test_only_absent_names_are_deleted() -> None:
    known = {"a.csv": A, ".env": A, "zz/data.csv": B, "gone.txt": A, "linked.txt": A}
    found = {"a.csv": A, "new.txt": B}
    probed = {".env": A, "zz/data.csv": B, "gone.txt": ABSENT, "linked.txt": UNSERVABLE}
    d = diff(known, found, probed)
    assert d.deleted == ["gone.txt"]
    assert sorted(d.unchanged) == [".env", "a.csv", "zz/data.csv"]
    assert d.changed == {"new.txt": B}
    assert d.lost == ["linked.txt"]


def test_a_known_name_not_probed_is_never_deleted() -> None:
    d = diff({"x": A}, {}, {})
    assert d.deleted == [] and d.lost == ["x"]


def test_rewritten_files_are_changed_whether_walked_or_probed() -> None:
    d = diff({"w": A, ".h": A}, {"w": B}, {".h": B})
    assert d.changed == {"w": B, ".h": B} and not d.deleted and not d.unchanged
