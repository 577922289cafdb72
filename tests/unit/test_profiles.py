"""The committed profiles are exactly what their parts generate, and the shared part exists once."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.languages import RECIPES
from sandboxd.pbtext import parse
from sandboxd.profiles import COMMON, PROFILES, main, render

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "jail-configs"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_committed_profile_is_what_its_parts_generate(name: str) -> None:
    assert (CONFIGS / f"{name}.cfg").read_text() == render(name), (
        f"jail-configs/{name}.cfg is out of date: run `python -m sandboxd.profiles`")


def test_every_profile_is_generated_and_every_part_used() -> None:
    assert set(PROFILES) == {r.profile for r in RECIPES.values()} == {p.stem for p in CONFIGS.glob("*.cfg")}
    used = {COMMON} | {part for p in PROFILES.values() for part in p.parts}
    assert used == {p.stem for p in (CONFIGS / "parts").glob("*.cfg")}


def test_no_directive_is_written_twice() -> None:
    """A hardening edit is made in one place: no setting line appears in two parts, and no
    profile sets the same field twice (protobuf would refuse a repeated scalar)."""
    seen: dict[str, str] = {}
    for part in sorted((CONFIGS / "parts").glob("*.cfg")):
        for line in part.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert line not in seen, f"{line!r} is in both {seen[line]} and {part.name}"
                seen[line] = part.name
    for name in PROFILES:
        msg = parse(render(name))
        for key, values in msg.items():
            if key not in ("envar", "mount"):
                assert len(values) == 1, f"{name}: {key} set {len(values)} times"
        dsts = [m["dst"][-1] for m in msg["mount"] if isinstance(m, dict)]
        assert len(dsts) == len(set(dsts)), f"{name}: a mount point is used twice"
        names = [str(e).split("=", 1)[0] for e in msg["envar"]]
        assert len(names) == len(set(names)), f"{name}: an environment variable is set twice"


def test_the_generator_rewrites_a_stale_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import sandboxd.profiles as profiles

    shutil.copytree(CONFIGS, tmp_path / "jail-configs")
    monkeypatch.setattr(profiles, "CONFIGS_DIR", str(tmp_path / "jail-configs"))
    assert main(["--check"]) == 0
    # The generator reads the parts of the tree it writes: a shared edit reaches every profile.
    common = tmp_path / "jail-configs" / "parts" / "common.cfg"
    common.write_text(common.read_text().replace('hostname: "sandbox"', 'hostname: "jail"'))
    assert main(["--check"]) == 1
    assert main([]) == 0 and all('hostname: "jail"' in (tmp_path / "jail-configs" / f"{n}.cfg").read_text()
                                  for n in PROFILES)
    stale = tmp_path / "jail-configs" / "php.cfg"
    stale.write_text(stale.read_text().replace("keep_caps: false", "keep_caps: true"))
    assert main(["--check"]) == 1
    assert "keep_caps: true" in stale.read_text()  # --check never writes
    assert main([]) == 0 and stale.read_text() == render("php", str(tmp_path / "jail-configs"))
