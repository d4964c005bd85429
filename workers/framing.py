"""Framing raw bytes into lines: the first step of every inbound message, before parsing.

Pure: no I/O beyond the stream it is handed, no clock, nothing raises on bad input: a line
longer than the limit or not valid UTF-8 becomes a ``Rejection`` right there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from workers.inbound import Limits, Line, Rejection, truncate

_BREAK = re.compile(rb"\r\n|\r|\n")
_UNICODE_BREAKS = ("\u2028", "\u2029")
_BOM = b"\xef\xbb\xbf"


def frame_lines(stream: IO[bytes], source: str, limits: Limits,
                chunk_size: int = 65_536) -> Iterator[Line]:
    """Split a byte stream into lines, holding at most ``max_line_bytes`` of any line.

    Blank lines are not inputs and yield nothing. A line over the limit or not valid UTF-8
    yields a rejection; the rest of an over-long line is skipped without being held in memory.
    Lines are numbered in the order they are framed (``source:N``).
    """
    lineno = 0
    for raw, size in _physical_lines(stream, limits.max_line_bytes, chunk_size):
        if lineno == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if size > limits.max_line_bytes:
            lineno += 1
            ref = f"{source}:{lineno}"
            yield Line(ref, None, Rejection(ref, "line_too_long",
                                            f"{size} bytes > {limits.max_line_bytes}",
                                            truncate(raw)))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            lineno += 1
            ref = f"{source}:{lineno}"
            yield Line(ref, None, Rejection(ref, "invalid_utf8", f"byte {exc.start}: {exc.reason}",
                                            truncate(raw)))
            continue
        for piece in split_unicode_breaks(text):
            lineno += 1
            if piece and not piece.isspace():  # as ``piece.strip()``, without the copy
                yield Line(f"{source}:{lineno}", piece)


def _physical_lines(stream: IO[bytes], limit: int,
                    chunk_size: int) -> Iterator[tuple[bytes, int]]:
    """(line without its break, its full size) for every LF, CRLF or CR line; a line over
    ``limit`` comes back cut to ``limit + 1`` bytes, with the size it really had."""
    buf = b""
    skipped = 0  # bytes of an over-long line seen so far (0: not inside one)
    head = b""
    while True:
        chunk = stream.read(chunk_size)
        buf += chunk
        pos = 0
        for match in _BREAK.finditer(buf):
            if chunk and match.group() == b"\r" and match.end() == len(buf):
                break  # maybe the CR of a CRLF whose LF is in the next chunk
            line = buf[pos:match.start()]
            pos = match.end()
            if skipped:
                yield head, skipped + len(line)
                skipped, head = 0, b""
            else:
                yield line, len(line)
        buf = buf[pos:]
        if not chunk:
            if skipped:
                yield head, skipped + len(buf)
            elif buf:
                yield buf, len(buf)
            return
        keep = b"\r" if buf.endswith(b"\r") else b""  # a CR that may start a CRLF
        if len(buf) > limit and not skipped:
            head, skipped, buf = buf[:limit + 1], len(buf) - len(keep), keep
        elif skipped:
            skipped, buf = skipped + len(buf) - len(keep), keep


def split_unicode_breaks(text: str) -> list[str]:
    """``text`` cut at U+2028 and U+2029, but never inside a JSON string of a JSON line."""
    if text.isascii() or not any(b in text for b in _UNICODE_BREAKS):
        return [text]
    if not text.lstrip().startswith(("{", "[")):
        return re.split("[\u2028\u2029]", text)
    pieces, start, in_string, escaped = [], 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and in_string:
            escaped = True
        elif ch == '"':
            in_string = not in_string
        elif ch in _UNICODE_BREAKS and not in_string:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces
