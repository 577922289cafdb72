"""sandboxd driven by LibreChat's real client code (@librechat/agents 3.9.2) and backend-style calls.

Each test runs one scenario of tests/e2e/client/driver.mjs against the live daemon and checks what
the real tools returned: the content string the model sees, the artifact LibreChat keeps, the
session state the real ToolNode carries between turns, and the bytes the backend downloads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

DriverRunner = Callable[..., dict[str, Any]]

NANOID = re.compile(r"^[A-Za-z0-9_-]{21}$")
SUMMARY_RE = re.compile(
    r"Generated files:\nSession files: (\d+) persisted file\(s\) are available in /mnt/data, "
    r"including (\d+) image\(s\)\."
)
PNG_MAGIC = "89504e470d0a1a0a"
BASE_SUFFIXES = [pytest.param("", id="root"), pytest.param("/v1", id="v1")]


def is_nanoid(value: Any) -> bool:
    return isinstance(value, str) and NANOID.match(value) is not None


def generated_summary(content: str) -> tuple[int, int] | None:
    """(files, images) from the tool's 'Generated files' line, or None when it has none."""
    match = SUMMARY_RE.search(content)
    return (int(match.group(1)), int(match.group(2))) if match else None


def by_name(files: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = [f["name"] for f in files]
    assert len(names) == len(set(names)), f"duplicate names in {names}"
    return {f["name"]: f for f in files}


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def assert_fresh(last_modified: Any, now_iso: str) -> None:
    """LibreChat re-uploads anything 23 h old: a just-written object must look just written."""
    assert isinstance(last_modified, str), last_modified
    age = parse_time(now_iso) - parse_time(last_modified)
    assert timedelta(seconds=-60) < age < timedelta(minutes=10), (last_modified, now_iso)


@pytest.mark.parametrize("suffix", BASE_SUFFIXES)
def test_python_hello(run_driver: DriverRunner, suffix: str) -> None:
    out = run_driver("py_hello", suffix)
    assert out["tool_name"] == "execute_code"
    result = out["result"]
    assert result["ok"], result.get("error")
    assert result["status"] == "success"
    assert result["content"].startswith("stdout:\nhello from sandboxd\nmajor 3"), result["content"]
    assert "stderr:" not in result["content"]
    assert generated_summary(result["content"]) is None
    artifact = result["artifact"]
    assert is_nanoid(artifact["session_id"]), artifact
    assert not artifact.get("files"), artifact


def test_python_exception_is_a_normal_result(run_driver: DriverRunner) -> None:
    result = run_driver("py_error")["result"]
    # A failing program is HTTP 200: the tool returns a result, it does not raise.
    assert result["ok"], result.get("error")
    content = result["content"]
    assert content.startswith("stdout:\nbefore the error\n"), content
    stderr = content.split("stderr:\n", 1)
    assert len(stderr) == 2, content
    assert "Traceback (most recent call last)" in stderr[1]
    assert "ValueError: boom-e2e" in stderr[1]
    assert is_nanoid(result["artifact"]["session_id"])


def test_unsupported_language_is_rejected(run_driver: DriverRunner) -> None:
    out = run_driver("bad_lang")
    assert out["status"] == 400, out
    body = out["body"]
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert "Unsupported language: cobol" in f"{body.get('error')} {body.get('message')}"


def test_files_across_turns_through_tool_node(run_driver: DriverRunner) -> None:
    out = run_driver("py_files")

    # Turn 1: four new files, nested paths kept, one image, all in this run's session.
    t1 = out["turn1"]
    assert t1["status"] == "success", t1
    assert t1["content"].startswith("stdout:\n"), t1["content"]
    assert "wrote files" in t1["content"]
    assert generated_summary(t1["content"]) == (4, 1), t1["content"]
    s1 = t1["artifact"]["session_id"]
    assert is_nanoid(s1)
    files1 = by_name(t1["artifact"]["files"])
    assert set(files1) == {"charts/plot.png", "reports/data.csv", "notes.txt", "scratch.md"}
    for name, f in files1.items():
        assert is_nanoid(f["id"]), f
        assert f["storage_session_id"] == s1, f
        assert f.get("inherited") is not True, f
    assert len({f["id"] for f in files1.values()}) == 4
    assert files1["charts/plot.png"].get("type") == "image/png"
    assert files1["charts/plot.png"].get("url") == f"/api/files/code/download/{s1}/{files1['charts/plot.png']['id']}"
    assert t1["artifact"].get("deleted_files") in (None, [])

    # The ToolNode's session now holds exactly those refs.
    sess1 = out["session_after_1"]
    assert sess1["session_id"] == s1
    assert {(f["name"], f["id"]) for f in sess1["files"]} == {(n, f["id"]) for n, f in files1.items()}

    # LibreChat downloads every new output.
    d1 = out["downloads_1"]
    png = d1["charts/plot.png"]
    assert png["status"] == 200 and png["head_hex"] == PNG_MAGIC and png["length"] > 100, png
    assert png["content_type"].startswith("image/png")
    assert png["content_disposition"].startswith("attachment")
    assert "filename*=UTF-8''" in png["content_disposition"] and "plot.png" in png["content_disposition"]
    csv_dl = d1["reports/data.csv"]
    assert csv_dl["status"] == 200 and csv_dl["content_type"].startswith("text/csv")
    assert csv_dl["text"].replace("\r\n", "\n") == "name,score\nann,3\nbob,4\ncy,5\n"
    assert d1["notes.txt"]["text"] == "delete me\n"
    assert d1["scratch.md"]["text"] == "# v1\n"

    # Turn 2: the injected files were there; one deleted, one modified, one added.
    t2 = out["turn2"]
    assert t2["status"] == "success", t2
    assert "total 12" in t2["content"] and "notes delete me" in t2["content"] and "png True" in t2["content"]
    s2 = t2["artifact"]["session_id"]
    assert is_nanoid(s2) and s2 != s1
    assert t2["artifact"]["deleted_files"] == ["notes.txt"]
    files2 = by_name(t2["artifact"]["files"])
    assert set(files2) == {"charts/plot.png", "reports/data.csv", "scratch.md", "reports/summary.txt"}
    for name in ("charts/plot.png", "reports/data.csv"):
        f = files2[name]
        assert f.get("inherited") is True, f
        assert f["id"] == files1[name]["id"] and f["storage_session_id"] == s1, f
    for name in ("scratch.md", "reports/summary.txt"):
        f = files2[name]
        assert f.get("inherited") is not True, f
        assert f["storage_session_id"] == s2 and is_nanoid(f["id"]), f
    assert files2["scratch.md"]["id"] != files1["scratch.md"]["id"]
    assert generated_summary(t2["content"]) == (2, 0), t2["content"]

    sess2 = out["session_after_2"]
    assert sess2["session_id"] == s2
    assert {f["name"] for f in sess2["files"]} == set(files2)
    assert "notes.txt" not in {f["name"] for f in sess2["files"]}

    d2 = out["downloads_2"]
    assert d2["scratch.md"]["text"] == "# v1\n# v2\n"
    assert d2["reports/summary.txt"]["text"] == "total=12\n"
    # The inherited refs still download the original bytes from the first session.
    assert d2["charts/plot.png"]["sha256"] == png["sha256"]
    assert d2["reports/data.csv"]["sha256"] == csv_dl["sha256"]

    # Turn 3 (bash_tool): the session as the ToolNode carries it is what /mnt/data holds.
    t3 = out["turn3"]
    assert t3["status"] == "success", t3
    listing, _, scratch = t3["content"].removeprefix("stdout:\n").partition("\n--\n")
    assert listing.splitlines() == [
        "./charts/plot.png", "./reports/data.csv", "./reports/summary.txt", "./scratch.md",
    ], t3["content"]
    assert scratch.startswith("# v1\n# v2"), t3["content"]
    files3 = by_name(t3["artifact"]["files"])
    assert set(files3) == set(files2)
    for name, f in files3.items():
        assert f.get("inherited") is True, f
        assert f["id"] == files2[name]["id"] and f["storage_session_id"] == files2[name]["storage_session_id"]
    assert generated_summary(t3["content"]) is None
    assert not t3["artifact"].get("deleted_files")


def test_bash_tool(run_driver: DriverRunner) -> None:
    out = run_driver("bash")
    assert out["tool_name"] == "bash_tool"

    heredoc = out["heredoc"]
    assert heredoc["ok"], heredoc.get("error")
    content = heredoc["content"]
    stdout, _, rest = content.removeprefix("stdout:\n").partition("\nstderr:\n")
    lines = stdout.splitlines()
    assert lines[0].endswith("cwd:/mnt/data"), content
    assert lines[1] == '{"py": "ok", "home": "/mnt/data"}', content
    assert lines[2] == '{"sum": 3}', content
    assert rest.startswith("to-stderr"), content
    assert generated_summary(content) == (1, 0), content
    files = by_name(heredoc["artifact"]["files"])
    assert set(files) == {"out/result.json"}
    f = files["out/result.json"]
    assert is_nanoid(f["id"]) and f["storage_session_id"] == heredoc["artifact"]["session_id"]

    args = out["args"]
    assert args["ok"], args.get("error")
    assert args["content"].startswith("stdout:\n[one][two words]"), args["content"]

    failing = out["failing"]
    assert failing["ok"], failing.get("error")  # a non-zero exit is still HTTP 200
    assert failing["content"].startswith("stdout:\npartial"), failing["content"]


@pytest.mark.parametrize("suffix", BASE_SUFFIXES)
def test_fetch_session_files(run_driver: DriverRunner, suffix: str) -> None:
    out = run_driver("session_files", suffix)
    made = out["made"]
    assert made["ok"], made.get("error")
    sid = made["artifact"]["session_id"]
    made_files = by_name(made["artifact"]["files"])
    assert set(made_files) == {"top.txt", "sub/dir/deep.csv"}

    listed = out["listed"]
    assert isinstance(listed, list) and len(listed) == 2, out
    entries = by_name(listed)
    # fetchSessionFiles names entries by metadata["original-filename"] (else the raw "S/F" key)
    # and takes the id from "id" (else from the key): both must give the exec's refs back.
    assert set(entries) == set(made_files), entries
    for name, entry in entries.items():
        assert entry["id"] == made_files[name]["id"], entry
        assert entry["storage_session_id"] == sid, entry
        assert entry["kind"] == "user" and entry["resource_id"] == entry["id"]

    raw = out["raw_full"]
    assert raw["status"] == 200
    for item in raw["body"]:
        sess, _, fid = item["name"].partition("/")
        assert sess == sid and is_nanoid(fid), item
        assert item["metadata"]["original-filename"] in made_files
        assert isinstance(item["size"], int) and isinstance(item["lastModified"], str)

    assert out["unknown"] == []
    assert out["unknown_raw"]["status"] == 404


@pytest.mark.parametrize("suffix", BASE_SUFFIXES)
def test_backend_upload_freshness_download_delete(run_driver: DriverRunner, suffix: str) -> None:
    out = run_driver("backend", suffix)
    now = out["now"]

    up = out["upload"]
    assert up["status"] == 200, up
    body = up["body"]
    assert body["message"] == "success"
    sid = body["storage_session_id"]
    assert is_nanoid(sid) and body["session_id"] == sid
    assert len(body["files"]) == 1
    fid = body["files"][0]["fileId"]
    assert is_nanoid(fid) and fid != sid
    assert body["files"][0]["filename"] == "input/scores.csv"

    up_bin = out["upload_bin"]
    assert up_bin["status"] == 200 and up_bin["body"]["message"] == "success", up_bin
    assert up_bin["body"]["files"][0]["filename"] == "blob.bin"

    # Legacy freshness check: the entry whose name starts with "S/F", with a recent lastModified.
    for key in ("summary", "summary_with_identity"):
        summary = out[key]
        assert summary["status"] == 200, summary
        match = [e for e in summary["body"] if e["name"].startswith(f"{sid}/{fid}")]
        assert len(match) == 1, summary
        assert match[0]["size"] == out["uploaded"]["length"]
        assert_fresh(match[0]["lastModified"], now)

    # Current freshness check: lastModified and the sandbox path (originalFilename).
    for key in ("object", "object_plain"):
        obj = out[key]
        assert obj["status"] == 200, obj
        assert obj["body"]["originalFilename"] == "input/scores.csv"
        assert obj["body"]["size"] == out["uploaded"]["length"]
        assert obj["body"]["contentType"].startswith("text/csv")
        assert_fresh(obj["body"]["lastModified"], now)

    for key in ("download", "download_plain"):
        dl = out[key]
        assert dl["status"] == 200, dl
        assert dl["sha256"] == out["uploaded"]["sha256"] and dl["length"] == out["uploaded"]["length"]
        assert dl["text"] == out["uploaded"]["text"]
        assert dl["content_type"].startswith("text/csv"), dl
        disposition = dl["content_disposition"]
        assert disposition.startswith("attachment"), disposition
        assert "filename*=UTF-8''" in disposition and "scores.csv" in disposition, disposition

    dl_bin = out["download_bin"]
    assert dl_bin["status"] == 200
    assert dl_bin["sha256"] == out["uploaded_bin"]["sha256"] and dl_bin["length"] == out["uploaded_bin"]["length"]
    assert dl_bin["content_type"].startswith("application/octet-stream"), dl_bin

    # The upload primed into execute_code, then echoed back unchanged as inherited.
    ex = out["exec"]
    assert ex["ok"], ex.get("error")
    assert ex["content"].startswith("stdout:\nrows 3 total 12"), ex["content"]
    assert generated_summary(ex["content"]) is None
    inherited = by_name(ex["artifact"].get("files") or [])
    assert inherited["input/scores.csv"]["id"] == fid
    assert inherited["input/scores.csv"]["storage_session_id"] == sid
    assert inherited["input/scores.csv"].get("inherited") is True
    assert not ex["artifact"].get("deleted_files")

    # DELETE twice on each route form: 200, then 404.
    for key in ("delete_files_route", "delete_objects_route"):
        first, second = out[key]
        assert first["status"] == 200, (key, first)
        assert second["status"] == 404, (key, second)
        assert isinstance(second["body"], dict) and "error" in second["body"]

    assert out["object_after_delete"]["status"] == 404
    assert out["download_after_delete"]["status"] == 404
    assert out["download_bin_after_delete"]["status"] == 404
    # An unknown session answers exactly like an unknown file.
    assert out["unknown_object"]["status"] == 404
    assert out["unknown_object"]["body"] == out["object_after_delete"]["body"]

    # A deleted input makes the exec fail as a rejected request (422), not a crash.
    gone = out["exec_with_deleted_input"]
    assert not gone["ok"]
    assert "rejected" in gone["error"], gone["error"]


def test_driver_refuses_non_loopback(agents_client_dir: Path) -> None:
    """Without a loopback base URL the driver stops before the package could use its hosted default."""
    env = {k: v for k, v in os.environ.items() if k != "LIBRECHAT_CODE_BASEURL"}
    proc = subprocess.run(
        ["node", "driver.mjs", "py_hello"], cwd=agents_client_dir, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("E2E-RESULT "))
    assert "loopback" in json.loads(line[len("E2E-RESULT "):])["fatal"]
