"""A minimal DNS client: ask one server for a name's A/AAAA records, over UDP.

The system resolver (``getaddrinfo``) cannot be pointed at a server, and a probe that
checks "does the office's resolver give the right answer" must ask that resolver, not
whatever ``/etc/resolv.conf`` names. This is the smallest correct subset of RFC 1035
for that: one question, recursion desired, answers matched by id and question, names
(with compression) skipped when reading records. Each query is bounded by the socket
timeout. Encoding and decoding are pure (:func:`encode_query`, :func:`decode_answer`).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
RCODE_NXDOMAIN = 3
_MAX_JUMPS = 32  # compression pointers followed per name (a loop is malformed)


class DnsError(OSError):
    """The server did not give a usable answer (timeout, SERVFAIL, malformed reply)."""


class _NotOurs(DnsError):
    """A datagram that does not answer our question (stray or late): skipped."""


class NoSuchName(DnsError):
    """The server answered that the name does not exist (NXDOMAIN): an answer, not a failure
    to get one."""


def encode_query(query_id: int, name: str, qtype: int) -> bytes:
    """One question for ``name`` (type ``qtype``, class IN), recursion desired."""
    labels = [p for p in name.rstrip(".").split(".") if p]
    if not labels or any(len(p.encode("idna")) > 63 for p in labels):
        raise DnsError(f"not a DNS name: {name!r}")
    qname = b"".join(bytes([len(p.encode("idna"))]) + p.encode("idna") for p in labels) + b"\0"
    return (
        struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
        + qname
        + struct.pack("!HH", qtype, CLASS_IN)
    )


def _skip_name(packet: bytes, offset: int) -> int:
    """Offset just past the name at ``offset`` (a pointer ends it)."""
    for _ in range(256):
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
    raise DnsError("malformed name in reply")


def decode_answer(query: bytes, reply: bytes) -> list[str]:
    """The A/AAAA addresses in ``reply`` to ``query`` (any order, as text).

    Raises :class:`NoSuchName` for NXDOMAIN, :class:`DnsError` for another error code,
    a truncated or malformed reply, or one that does not answer ``query``.
    """
    try:
        rid, flags, _qdcount, ancount = struct.unpack("!HHHH", reply[:8])
        if rid != struct.unpack("!H", query[:2])[0] or not flags & 0x8000:
            raise _NotOurs("reply does not answer our query")
        if reply[12 : len(query)].lower() != query[12:].lower():
            raise _NotOurs("reply is for another question")
        rcode = flags & 0xF
        if rcode == RCODE_NXDOMAIN:
            raise NoSuchName("no such name (NXDOMAIN)")
        if rcode != 0:
            raise DnsError(f"server answered with error code {rcode}")
        offset = len(query)
        addresses: list[str] = []
        for _ in range(ancount):
            offset = _skip_name(reply, offset)
            rtype, rclass, _ttl, length = struct.unpack("!HHIH", reply[offset : offset + 10])
            offset += 10
            data = reply[offset : offset + length]
            if len(data) != length:
                raise DnsError("truncated reply")
            offset += length
            if rclass == CLASS_IN and (rtype, length) in ((TYPE_A, 4), (TYPE_AAAA, 16)):
                addresses.append(str(ipaddress.ip_address(data)))
        return addresses
    except (struct.error, IndexError):
        raise DnsError("malformed reply") from None


def query(host: str, port: int, name: str, qtypes: tuple[int, ...], timeout_s: float) -> list[str]:
    """The addresses server ``host:port`` (an IP address) gives for ``name``, over UDP,
    for each type in ``qtypes``; the whole exchange takes at most ``timeout_s`` seconds.

    NXDOMAIN for every type raises :class:`NoSuchName`; no reply in time raises
    ``TimeoutError``.
    """
    deadline = time.monotonic() + timeout_s
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    addresses: list[str] = []
    missing = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for qtype in qtypes:
            packet = encode_query(secrets.randbelow(0x10000), name, qtype)
            sock.sendto(packet, (host, port))
            while True:  # a stray or late datagram is skipped, within the deadline
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer from {host}:{port} within {timeout_s:g}s")
                sock.settimeout(left)
                reply, sender = sock.recvfrom(4096)
                if sender[0] != host and ipaddress.ip_address(sender[0]) != ipaddress.ip_address(
                    host
                ):
                    continue
                try:
                    addresses += decode_answer(packet, reply)
                except _NotOurs:
                    continue
                except NoSuchName:
                    missing += 1
                break
    if missing == len(qtypes):
        raise NoSuchName("no such name (NXDOMAIN)")
    return addresses
