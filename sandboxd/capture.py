"""Bounded capture of a stream: keeps the head and the tail, counts and drops the middle.

The tail matters most (a traceback ends there), so the reply shows both ends with a marker
that says how much was cut. Memory use is bounded by `keep_bytes` whatever the program prints.
"""

from __future__ import annotations

__all__ = ["HeadTail"]


class HeadTail:
    def __init__(self, keep_bytes: int) -> None:
        self.head_max = keep_bytes // 2
        self.tail_max = keep_bytes - self.head_max
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data[-self.tail_max :]
            if len(self.tail) > self.tail_max:
                del self.tail[: len(self.tail) - self.tail_max]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        if not self.truncated:
            return head + self.tail.decode("utf-8", errors="replace")
        # Cut at a line boundary when one is near, so the tail starts on a whole line.
        tail = bytes(self.tail)
        nl = tail.find(b"\n", 0, 4096)
        if nl != -1:
            tail = tail[nl + 1 :]
        omitted = self.total - len(self.head) - len(tail)
        return (
            head
            + f"\n\n[... {omitted} bytes of output omitted ...]\n\n"
            + tail.decode("utf-8", errors="replace")
        )
