import pytest

from sandboxd.errors import BadRequest
from sandboxd.ids import is_valid_id, new_id, redact
from sandboxd.workspace import validate_name


@pytest.mark.parametrize("name", ["data.csv", "input/scores.csv", "a/b/c/d.txt", "ünïcode.txt", "with space.md"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert "/".join(validate_name(name)) == name


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../x", "a/../../x", "a/./b", ".", "..", "a\0b", "a\nb", "a\\b", "x" * 300,
     "/".join(["d"] * 20) + "/f", "a/" + "b" * 256],
)
def test_dangerous_names_are_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        validate_name(name)


def test_ids_are_21_char_nanoids_and_distinct() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(is_valid_id(i) for i in ids)


@pytest.mark.parametrize("bad", ["", "short", "x" * 22, "a" * 20 + "/", "../../../../etc/passwd",
                                 "550e8400-e29b-41d4-a716-446655440000"])
def test_non_ids_are_rejected(bad: str) -> None:
    assert not is_valid_id(bad)


def test_redacted_id_is_not_usable() -> None:
    i = new_id()
    assert not is_valid_id(redact(i)) and i not in redact(i)
