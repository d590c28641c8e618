"""Helpers for tests that read HTTP/1.1 bytes by hand."""

from __future__ import annotations


def dechunk(raw: bytes) -> bytes:
    """The payload of a chunked body (RFC 9112 §7.1), trailers ignored."""
    out = b""
    while True:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, raw = out + raw[:size], raw[size + 2:]
