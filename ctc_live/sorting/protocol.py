"""Sorter controller serial protocol v1 (hardware/sorter-controller/PROTOCOL.md).

Shared by the emulator (controller side) and the driver (host side), so both read and
write the same lines. The firmware implements the same rules in C.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 1
MAX_LINE = 64  # bytes counting the terminating "\n": at most 63 characters before it
MAX_ID = 2**31 - 1
MAX_U64 = 2**64 - 1
MISS_TOLERANCE_US = 100  # a pulse due more than this in the past is missed, never fired late
WATCHDOG_US = 2_000_000  # armed and silent this long: the controller disarms itself
MAX_WIDTH_US = 1_000_000
MAX_PENDING = 16

# Error codes and their texts, exactly as the controller sends them.
ERR_SYNTAX = 1
ERR_TOO_LONG = 2
ERR_NOT_ARMED = 3
ERR_WIDTH = 4
ERR_UNKNOWN_ID = 5
ERR_QUEUE_FULL = 6
ERR_DUPLICATE = 7
ERROR_TEXT = {
    ERR_SYNTAX: "bad syntax",
    ERR_TOO_LONG: "line too long",
    ERR_NOT_ARMED: "not armed",
    ERR_WIDTH: "width out of range",
    ERR_UNKNOWN_ID: "unknown id",
    ERR_QUEUE_FULL: "queue full",
    ERR_DUPLICATE: "duplicate id pending",
}


class LineAssembler:
    """Bytes → complete lines, applying the protocol's framing rules.

    ``feed`` returns a list of lines: ``str`` for a complete line (``\\r`` dropped, decoded
    latin-1 so any byte survives), or ``None`` for a line that was too long. Empty lines
    are dropped: they carry nothing to answer.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[str | None]:
        lines: list[str | None] = []
        for byte in data:
            if byte == 0x0A:
                if self._overflow:
                    lines.append(None)
                elif self._buf:
                    lines.append(self._buf.decode("latin-1"))
                self._buf.clear()
                self._overflow = False
            elif byte == 0x0D or self._overflow:
                continue
            elif len(self._buf) >= MAX_LINE - 1:
                self._overflow = True
                self._buf.clear()
            else:
                self._buf.append(byte)
        return lines


def parse_uint(token: str, limit: int = MAX_U64) -> int | None:
    """Unsigned decimal in 0..limit, or None (no sign, no spaces, ASCII digits only)."""
    if not token or len(token) > 20 or not all("0" <= c <= "9" for c in token):
        return None
    value = int(token)
    return value if value <= limit else None


def parse_id(token: str) -> int | None:
    value = parse_uint(token, MAX_ID)
    return value if value else None


def err_line(pulse_id: int | None, code: int) -> str:
    return f"ERR {pulse_id if pulse_id is not None else '-'} {code} {ERROR_TEXT[code]}"


@dataclass(frozen=True, slots=True)
class Reply:
    """One line from the controller, split into its kind and fields."""

    kind: str  # PONG, INFO, OK, ACK, DONE, MISS, CANCELLED, STATUS, ERR, EVENT
    line: str
    id: int | None = None  # ACK/DONE/MISS/CANCELLED/ERR pulse id (ERR -: None)
    t: int | None = None  # DONE start_t, MISS t, PONG t
    host_us: int | None = None  # PONG
    code: int | None = None  # ERR
    fields: dict[str, str] | None = None  # INFO/STATUS key=value pairs
    words: tuple[str, ...] = ()


class ProtocolError(ValueError):
    """A line from the controller that does not follow the protocol."""


def parse_reply(line: str) -> Reply:
    words = tuple(line.split())
    if not words:
        raise ProtocolError("empty line")
    kind = words[0]
    try:
        if kind == "PONG" and len(words) == 3:
            return Reply(kind, line, host_us=_num(words[1]), t=_num(words[2]), words=words)
        if kind in ("ACK", "CANCELLED") and len(words) == 2:
            return Reply(kind, line, id=_num(words[1]), words=words)
        if kind in ("DONE", "MISS") and len(words) == 3:
            return Reply(kind, line, id=_num(words[1]), t=_num(words[2]), words=words)
        if kind == "ERR" and len(words) >= 3:
            pid = None if words[1] == "-" else _num(words[1])
            return Reply(kind, line, id=pid, code=_num(words[2]), words=words)
        if kind in ("INFO", "STATUS"):
            fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            return Reply(kind, line, fields=fields, words=words)
        if kind in ("OK", "EVENT") and len(words) >= 2:
            return Reply(kind, line, words=words)
    except ValueError:
        pass
    raise ProtocolError(f"not a protocol v1 reply: {line!r}")


def _num(token: str) -> int:
    value = parse_uint(token)
    if value is None:
        raise ValueError(token)
    return value
