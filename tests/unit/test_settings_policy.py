from pathlib import Path

import pytest

from sandboxd.errors import BadRequest, ConfigError
from sandboxd.languages import RECIPES, resolve
from sandboxd.policy import JailRun, Policy
from sandboxd.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_need_no_config_file() -> None:
    s = load_settings(None)
    assert s.host == "127.0.0.1" and s.port == 8000 and s.auth.mode == "none"
    s.check_exposure()  # loopback without auth is allowed


def test_unauthenticated_remote_listener_is_refused() -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        load_settings(None, host="0.0.0.0").check_exposure()


def test_remote_listener_with_keys_is_allowed(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('host = "0.0.0.0"\n[auth]\nmode = "api_key"\napi_keys = ["k1", "k2"]\n')
    s = load_settings(str(cfg))
    s.check_exposure()
    assert s.api_keys() == ("k1", "k2")


def test_unknown_config_keys_fail_fast(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[limits]\nmemory_max = 5\n")
    with pytest.raises(ConfigError, match="memory_max"):
        load_settings(str(cfg))


def test_out_of_range_limit_fails_fast(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[limits]\npids_max = 1\n")
    with pytest.raises(ConfigError, match="pids_max"):
        load_settings(str(cfg))


@pytest.mark.parametrize("alias,lang", [("Python", "py"), ("python3", "py"), ("PY", "py"), ("sh", "bash"),
                                        ("Bash", "bash")])
def test_aliases_resolve_case_insensitively(alias: str, lang: str) -> None:
    assert resolve(alias).lang == lang


def test_unknown_language_is_400_naming_it() -> None:
    with pytest.raises(BadRequest, match="Unsupported language: cobol"):
        resolve("cobol")


def _policy(configs: Path) -> Policy:
    return Policy(str(configs), "/bin/true")  # argv rendering only: nsjail is not run here


def test_argv_maps_ids_to_a_non_root_outside_uid_and_binds_session() -> None:
    argv = _policy(REPO / "jail-configs").argv(JailRun(
        profile="python", session_dir="/s", source_dir="/src", outside_uid=300007, wall_timeout_s=2.5,
        file_max_bytes=10 * 1024 * 1024, open_files_max=256, log_fd=7, program=("/bin/py", "x")))
    joined = " ".join(argv)
    assert "--user 1000:300007:1" in joined and "--group 1000:300007:1" in joined
    assert "--bindmount /s:/mnt/data" in joined and "--bindmount_ro /src:/tmp/code" in joined
    assert "--time_limit 4" in joined and "--rlimit_fsize 10" in joined and "--log_fd 7" in joined
    assert argv[-5:] == ["--", "/usr/bin/tini", "--", "/bin/py", "x"]  # tini is the jail's pid 1
    # The config comes first so the per-run binds are mounted after its tmpfs /tmp.
    assert argv.index("--config") < argv.index("--bindmount_ro")


@pytest.mark.parametrize("profile", sorted({r.profile for r in RECIPES.values()}))
def test_shipped_profiles_pass_the_checks(profile: str) -> None:
    _policy(REPO / "jail-configs").check_profile(profile)


@pytest.mark.parametrize("line", ["uidmap { inside_id: 0 outside_id: 0 }", "keep_env: true", "clone_newnet: false",
                                  "keep_caps: true"])
def test_profile_weakening_a_guarantee_is_refused(tmp_path: Path, line: str) -> None:
    (tmp_path / "seccomp.kafel").write_text("USE x DEFAULT ALLOW\n")
    text = (REPO / "jail-configs" / "python.cfg").read_text()
    (tmp_path / "python.cfg").write_text(text + "\n" + line + "\n")
    with pytest.raises(ConfigError):
        _policy(tmp_path).check_profile("python")


@pytest.mark.parametrize("mount", [
    'mount { dst: "/data" src: "/root" is_bind: true }',
    'mount { dst: "/h" src: "/home/user" is_bind: true }',
    'mount { dst: "/all" src: "/" is_bind: true }',
    'mount { dst: "/usr2" src: "/usr" is_bind: true rw: true }',
])
def test_profile_exposing_host_paths_is_refused(tmp_path: Path, mount: str) -> None:
    (tmp_path / "seccomp.kafel").write_text("USE x DEFAULT ALLOW\n")
    text = (REPO / "jail-configs" / "python.cfg").read_text()
    (tmp_path / "python.cfg").write_text(text + "\n" + mount + "\n")
    with pytest.raises(ConfigError):
        _policy(tmp_path).check_profile("python")


def test_profile_binding_the_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "seccomp.kafel").write_text("USE x DEFAULT ALLOW\n")
    text = (REPO / "jail-configs" / "python.cfg").read_text()
    (tmp_path / "python.cfg").write_text(text + '\nmount { dst: "/s" src: "/opt/sandboxd/run" is_bind: true }\n')
    with pytest.raises(ConfigError, match="forbidden"):
        _policy(tmp_path).check_profile("python", state_dir="/opt/sandboxd/run/")
    _policy(REPO / "jail-configs").check_profile("python", state_dir="/opt/sandboxd/run")


def test_writable_submount_under_a_readonly_bind_is_refused() -> None:
    policy = _policy(REPO / "jail-configs")
    clean = "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n30 22 0:30 / /tmp rw - tmpfs tmpfs rw\n"
    policy.check_submounts("python", clean)
    dirty = clean + "31 22 0:31 / /usr/local/share rw,relatime - tmpfs tmpfs rw\n"
    with pytest.raises(ConfigError, match="/usr/local/share"):
        policy.check_submounts("python", dirty)
    readonly = clean + "31 22 0:31 / /usr/local/share ro,relatime - tmpfs tmpfs ro\n"
    policy.check_submounts("python", readonly)


def test_config_parser_reads_what_nsjail_reads() -> None:
    from sandboxd.pbtext import parse

    msg = parse('name: "x" # c\nmount { dst: "/a" src_content: "l1\\n" "l2" }\ntime_limit: 5\nmode: ONCE\n')
    assert msg["name"] == ["x"] and msg["time_limit"] == [5] and msg["mode"] == ["ONCE"]
    assert msg["mount"] == [{"dst": ["/a"], "src_content": ["l1\nl2"]}]
    with pytest.raises(ConfigError):
        parse("mount { dst: ")
