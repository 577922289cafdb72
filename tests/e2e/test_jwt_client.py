"""LibreChat >= 0.8.6 with its Code API JWT on, through the real client (@librechat/agents 3.9.2):
its tools send `Authorization: Bearer <JWT>` from the `authHeaders` LibreChat gives them, and a
`sandboxd serve` in mode jwt runs the code for a valid token and refuses the rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveDaemon
from tests.jwt_signer import Signer

from .conftest import drive

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer("EdDSA")  # LibreChat's default algorithm and kid


@pytest.fixture(scope="module")
def jwt_daemon(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("jwt-live")
    daemon = LiveDaemon(tmp, auth={"mode": "jwt", "jwt_public_key_files": [signer.write_pem(tmp)]})
    try:
        yield daemon.url
    finally:
        assert daemon.stop() == 0


def test_real_client_authenticates_with_a_bearer_jwt(agents_client_dir: Path, jwt_daemon: str,
                                                     signer: Signer) -> None:
    observed = drive(agents_client_dir, jwt_daemon, "jwt", extra_env={
        "E2E_BEARER": signer.mint(sub="665f1e0c0c0c0c0c0c0c0c0c"),
        "E2E_OTHER_BEARER": signer.mint(sub="another-user"),
    })
    exec_ = observed["exec"]
    assert exec_["ok"] and "hello with a token" in exec_["content"], exec_
    assert [f["name"] for f in exec_["artifact"]["files"]] == ["jwt.txt"]
    assert observed["listed"] == ["jwt.txt"]
    assert observed["listed_by_other"] == []  # another subject's lookup sees nothing (404)
    assert observed["bash"]["ok"] and "bash with a token" in observed["bash"]["content"], observed["bash"]
    # without a token, or with a bad one, the tool reports the 401 as such instead of running
    for case in ("without_token", "bad_token"):
        result = observed[case]
        assert not result["ok"] and "not authorized" in result["error"], (case, result)
