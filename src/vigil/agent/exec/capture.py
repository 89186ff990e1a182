"""Head and tail of a child's output within a byte cap, in O(cap) memory.

A remediation script may print 100 MB; what is kept is the start (what it set out to
do) and the end (how it finished, and a ``vigil-outcome:`` line), joined by a marker
saying how much was dropped, never splitting a UTF-8 character.
"""

from __future__ import annotations


class HeadTail:
    """Keeps the first and last bytes of a stream within ``cap``; memory is O(cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = max(0, cap)
        self.head_cap = self.cap // 2
        self.tail_cap = self.cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()  # a ring of the latest bytes, trimmed from the front
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the stream."""
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk or self.tail_cap == 0:
            return
        if len(chunk) >= self.tail_cap:
            self.tail = bytearray(chunk[-self.tail_cap :])
        else:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.tail_cap)]

    def result(self) -> tuple[str, bool]:
        """(text, truncated). Truncated text, marker included, fits in ``cap`` characters."""
        if self.total <= self.cap:
            return (self.head + self.tail).decode("utf-8", errors="replace"), False
        # Reserve room for the marker so the excerpt, marker included, stays within the cap
        # (and so within the wire's output limit); ``total`` bounds the digits of N.
        budget = max(0, self.cap - len(_marker(self.total)))
        head_keep = budget // 2
        tail_keep = min(budget - head_keep, len(self.tail))
        head = _cut_utf8_end(bytes(self.head[:head_keep]))
        tail = _cut_utf8_start(bytes(self.tail[len(self.tail) - tail_keep :]))
        dropped = self.total - len(head) - len(tail)
        text = head.decode("utf-8", errors="replace") + _marker(dropped)
        return text + tail.decode("utf-8", errors="replace"), True


def _marker(dropped: int) -> str:
    return f"\n...[truncated {dropped} bytes]...\n"


def _cut_utf8_end(data: bytes) -> bytes:
    """Drop a multi-byte character split by the cut at the end (else it decodes as U+FFFD)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # found the lead (or ASCII) byte of the last character
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0xE else 4
            return data if need <= back else data[:-back]
    return data


def _cut_utf8_start(data: bytes) -> bytes:
    """Drop continuation bytes left at the start by the cut (at most three)."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]
