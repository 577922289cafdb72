from sandboxd.capture import HeadTail


def test_small_output_is_kept_whole() -> None:
    h = HeadTail(1000)
    h.feed(b"hello ")
    h.feed(b"world\n")
    assert h.text() == "hello world\n"
    assert not h.truncated


def test_large_output_keeps_head_and_tail_with_marker() -> None:
    h = HeadTail(1000)
    h.feed(b"HEAD-START\n")
    for i in range(10000):
        h.feed(f"line {i}\n".encode())
    h.feed(b"Traceback: the end\n")
    text = h.text()
    assert text.startswith("HEAD-START\n")
    assert text.endswith("Traceback: the end\n")
    assert "bytes of output omitted" in text
    assert len(text) < 1200
    assert h.total > 80000


def test_tail_starts_on_a_whole_line() -> None:
    h = HeadTail(100)
    h.feed(b"x" * 60 + b"".join(b"row%04d\n" % i for i in range(100)))
    tail = h.text().split("omitted ...]\n\n", 1)[1]
    assert tail.startswith("row")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    h = HeadTail(100)
    h.feed(b"ok \xff\xfe bytes")
    assert h.text() == "ok \ufffd\ufffd bytes"


def test_split_multibyte_character_decodes() -> None:
    h = HeadTail(1000)
    data = "é".encode()
    h.feed(data[:1])
    h.feed(data[1:])
    assert h.text() == "é"
