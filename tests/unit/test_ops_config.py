"""Operator-facing configuration: SANDBOXD_* environment overrides (validated like the file),
`sandboxd config show` (the real CLI, secrets masked), and the JSON log format."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from sandboxd import logs
from sandboxd.configshow import MASK, is_secret
from sandboxd.envconfig import ENV_SETTINGS
from sandboxd.errors import ConfigError
from sandboxd.ids import new_id, redact
from sandboxd.settings import MiB, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sandboxd.toml"
    path.write_text(text)
    return str(path)


def test_env_overrides_the_file_and_flags_override_env(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k-from-file\n")
    cfg = _config(tmp_path, 'port = 8001\nqueue_wait_s = 3.0\n[limits]\nmemory_max_bytes = 268435456\n'
                            'pids_max = 99\n')
    env = {
        "SANDBOXD_PORT": "9001",
        "SANDBOXD_WALL_TIMEOUT_S": "12.5",
        "SANDBOXD_MEMORY_MAX_BYTES": str(128 * MiB),
        "SANDBOXD_AUTH_MODE": "api_key",
        "SANDBOXD_API_KEYS_FILE": str(keys),
        "SANDBOXD_METRICS_REQUIRE_AUTH": "true",
        "SANDBOXD_LOG_LEVEL": "debug",
        "SANDBOXD_SHUTDOWN_DRAIN_S": "7",
        "SANDBOXD_MAX_CONCURRENT_RUNS": "2",
        "UNRELATED": "x",
    }
    s = load_settings(cfg, environ=env)
    assert (s.port, s.limits.wall_timeout_s, s.limits.memory_max_bytes) == (9001, 12.5, 128 * MiB)
    assert (s.auth.mode, s.api_keys(), s.metrics_require_auth, s.log_level) == ("api_key", ("k-from-file",),
                                                                                 True, "debug")
    assert (s.shutdown_drain_s, s.max_concurrent_runs) == (7.0, 2)
    # What the environment does not name keeps the file's value, then the default.
    assert (s.queue_wait_s, s.limits.pids_max, s.storage.sessions_max) == (3.0, 99, Settings().storage.sessions_max)
    assert load_settings(cfg, environ=env, port=9100).port == 9100  # a command-line flag wins
    assert load_settings(cfg).port == 8001  # no environment given: the file alone


def test_env_cannot_set_unlisted_settings_or_secrets(tmp_path: Path) -> None:
    s = load_settings(None, environ={"SANDBOXD_API_KEYS": "leaked", "SANDBOXD_AUTH_API_KEYS": "leaked",
                                     "SANDBOXD_UID_BASE": "1000"})
    assert s == Settings()
    # Every listed variable names a real setting (a rename cannot leave a dead variable).
    for var, path in ENV_SETTINGS.items():
        node: object = Settings()
        for part in path.split("."):
            assert hasattr(node, part), var
            node = getattr(node, part)


@pytest.mark.parametrize("var,value", [
    ("SANDBOXD_PORT", "eighty"),
    ("SANDBOXD_PORT", "70000"),
    ("SANDBOXD_PORT", "80.5"),
    ("SANDBOXD_MAX_CONCURRENT_RUNS", "0"),
    ("SANDBOXD_AUTH_MODE", "open"),
    ("SANDBOXD_LOG_LEVEL", "verbose"),
    ("SANDBOXD_WALL_TIMEOUT_S", "nan"),
    ("SANDBOXD_WALL_TIMEOUT_S", "-1"),
    ("SANDBOXD_MEMORY_MAX_BYTES", "1024"),
    ("SANDBOXD_METRICS_REQUIRE_AUTH", "maybe"),
    ("SANDBOXD_SHUTDOWN_DRAIN_S", ""),
])
def test_bad_env_value_is_a_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={var: value})
    assert var in err.value.message


def test_env_value_breaking_a_cross_field_rule_is_named() -> None:
    # session_max_bytes (256 MiB by default) must fit in storage_max_bytes.
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"SANDBOXD_STORAGE_MAX_BYTES": str(64 * MiB)})
    assert "SANDBOXD_STORAGE_MAX_BYTES" in err.value.message
    # The harmless twin: the same variable with a value that fits.
    assert load_settings(None, environ={"SANDBOXD_STORAGE_MAX_BYTES": str(512 * MiB)}).storage.storage_max_bytes \
        == 512 * MiB


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXD_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "sandboxd", *args], capture_output=True, text=True,
                          env=full, cwd=REPO, timeout=60)


def test_config_show_prints_effective_toml_with_secrets_masked(tmp_path: Path) -> None:
    secrets = ["sk-first-" + "a" * 30, "sk-second-" + "b" * 30]
    keys_file = tmp_path / "more-keys"
    keys_file.write_text("sk-in-file-" + "c" * 30 + "\n")
    cfg = _config(tmp_path, '[auth]\nmode = "api_key"\napi_keys = ' + json.dumps(secrets) +
                  f'\napi_keys_file = "{keys_file}"\n[storage]\nsessions_max = 77\n')
    out = _cli("config", "show", "--config", cfg, env={"SANDBOXD_PORT": "9123", "SANDBOXD_LOG_LEVEL": "warning"})
    assert out.returncode == 0, out.stderr
    for secret in secrets + [keys_file.read_text().strip()]:
        assert secret not in out.stdout and secret not in out.stderr
    shown = msgspec.toml.decode(out.stdout)
    assert shown["auth"]["api_keys"] == [MASK, MASK]  # masked, still countable
    assert shown["auth"]["api_keys_file"] == str(keys_file)  # a path is not a secret
    assert (shown["port"], shown["log_level"], shown["storage"]["sessions_max"]) == (9123, "warning", 77)
    # The output is a config `--config` accepts back: the same settings, keys masked.
    again = load_settings(_config(tmp_path, out.stdout))
    expected = load_settings(cfg, environ={"SANDBOXD_PORT": "9123", "SANDBOXD_LOG_LEVEL": "warning"})
    assert again == msgspec.structs.replace(expected, auth=msgspec.structs.replace(expected.auth,
                                                                                    api_keys=(MASK, MASK)))


def test_config_show_rejects_a_bad_env_value_naming_it(tmp_path: Path) -> None:
    out = _cli("config", "show", "--config", _config(tmp_path, ""), env={"SANDBOXD_PIDS_MAX": "lots"})
    assert out.returncode == 2
    assert "SANDBOXD_PIDS_MAX" in out.stderr and out.stdout == ""


def test_masking_rule_covers_secret_names_not_paths() -> None:
    for path in ("auth.api_keys", "auth.jwt_secret", "auth.client_token", "auth.private_key", "x.password"):
        assert is_secret(path), path
    for path in ("auth.api_keys_file", "auth.mode", "auth.public_keys", "auth.jwks_file", "host", "port",
                 "limits.memory_max_bytes", "auth.private_key_path"):
        assert not is_secret(path), path


def _log_lines(fn: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("sandboxd.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        assert callable(fn)
        fn(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_log_lines_carry_request_id_and_never_a_whole_id() -> None:
    sid, fid = new_id(), new_id()
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLWJ5dGVz"

    def emit(logger: logging.Logger) -> None:
        token = logs.REQUEST_ID.set("req-12345678")
        try:
            logger.info("GET /download/%s/%s failed\nnext line", sid, fid)
            try:
                raise KeyError(fid)
            except KeyError:
                logger.exception("lookup of sid=%s", sid)
            logger.warning("token %s seen", jwt)
        finally:
            logs.REQUEST_ID.reset(token)
        logger.info("outside a request; %s kept", redact(sid))
        # Harmless twins: tokens of 20 and 22 characters, and ordinary words, are left alone.
        logger.info("keep %s and %s", "a" * 20, "b" * 22)

    lines = _log_lines(emit)
    assert [line["level"] for line in lines] == ["info", "error", "warning", "info", "info"]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        text = json.dumps(line, ensure_ascii=False)
        assert sid not in text and fid not in text and jwt not in text
    assert [line.get("request_id") for line in lines] == ["req-12345678"] * 3 + [None, None]
    assert lines[0]["message"] == f"GET /download/{sid[:6]}…/{fid[:6]}… failed\nnext line"
    assert "KeyError" in str(lines[1]["exception"])
    assert lines[3]["message"] == f"outside a request; {sid[:6]}… kept"
    assert lines[4]["message"] == f"keep {'a' * 20} and {'b' * 22}"
