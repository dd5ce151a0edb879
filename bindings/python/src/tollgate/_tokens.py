"""Tokens (docs/tokens.md): a decision's token windows and its reservation's
ticket, settling it once, and a response's usage as the library reads it.
The estimate, the rule for a response without usage and every parse of the
response are the library's; this module moves bytes and numbers."""

from __future__ import annotations

import ctypes
import threading
from ctypes import byref, c_uint64, c_void_p
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _ffi
from ._render import _COLLECT
from .errors import InvalidArgument, error_for

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["ENDINGS", "Ticket", "TokenWindows", "UsageReader"]

#: How a response ended, by name, as tg_settle takes it.
ENDINGS = {
    "usage": _ffi.TG_END_USAGE,
    "complete": _ffi.TG_END_COMPLETE,
    "failed": _ffi.TG_END_FAILED,
    "cut": _ffi.TG_END_CUT,
}


class Ticket:
    """A reservation of tokens, to settle exactly once with
    :meth:`tollgate.Limiter.settle` (a second settle raises RuntimeError)."""

    __slots__ = ("_c", "_lock", "_settled", "reserved")

    def __init__(self, c: _ffi.TgTicket, reserved: int) -> None:
        self._c = c
        self._settled = False
        self._lock = threading.Lock()
        #: Tokens reserved.
        self.reserved = reserved

    @property
    def settled(self) -> bool:
        """Whether the ticket has been settled."""
        return self._settled

    def _take(self) -> _ffi.TgTicket:
        with self._lock:
            if self._settled:
                raise RuntimeError("this ticket is already settled: settle each reservation once")
            self._settled = True
            return self._c

    def __repr__(self) -> str:
        return f"Ticket(reserved={self.reserved}, settled={self._settled})"


@dataclass(frozen=True)
class TokenWindows:
    """A key's token windows as one decision left them: limits, tokens left
    after this decision's reservation, resets (epoch seconds), what it
    reserved, and the ticket to settle (None when nothing was reserved)."""

    minute_limit: int
    minute_remaining: int
    minute_reset: int
    day_limit: int
    day_remaining: int
    day_reset: int
    reserved: int
    ticket: Ticket | None

    @property
    def header_items(self) -> list[tuple[bytes, bytes]]:
        """The six ``x-ratelimit-*-tokens`` headers (tg_tokens_header_pairs)."""
        out: list[tuple[bytes, bytes]] = []
        st = _ffi.tg_tokens_header_pairs(byref(_c_of(self)), _COLLECT, out)
        if st:
            raise error_for(st, "tg_tokens_header_pairs")
        return out


def _c_of(t: TokenWindows) -> _ffi.TgTokens:
    c = _ffi.TgTokens()
    c.size = ctypes.sizeof(_ffi.TgTokens)
    c.has_tokens = 1
    c.minute_limit, c.minute_remaining, c.minute_reset = t.minute_limit, t.minute_remaining, t.minute_reset
    c.day_limit, c.day_remaining, c.day_reset = t.day_limit, t.day_remaining, t.day_reset
    c.reserved = t.reserved
    return c


def windows_from_c(c: _ffi.TgTokens) -> TokenWindows | None:
    """The TokenWindows in a tg_tokens, None when the key has no token limit."""
    if not c.has_tokens:
        return None
    ticket = None
    if c.ticket.words[0] or c.ticket.words[1]:
        t = _ffi.TgTicket()
        t.words[0], t.words[1] = c.ticket.words[0], c.ticket.words[1]
        ticket = Ticket(t, int(c.reserved))
    return TokenWindows(
        int(c.minute_limit),
        int(c.minute_remaining),
        int(c.minute_reset),
        int(c.day_limit),
        int(c.day_remaining),
        int(c.day_reset),
        int(c.reserved),
        ticket,
    )


def settle(limiter: Limiter, ticket: Ticket, ending: str | int, used: int, now_ms: int | None) -> int:
    """tg_settle; the tokens the key is charged in the end."""
    code = ENDINGS.get(ending) if isinstance(ending, str) else ending
    if code is None or not isinstance(code, int):
        raise InvalidArgument(_ffi.TG_E_INVALID, f"ending must be one of {sorted(ENDINGS)}, not {ending!r}")
    if isinstance(used, bool) or not isinstance(used, int) or not 0 <= used <= 0xFFFF_FFFF_FFFF_FFFF:
        raise InvalidArgument(_ffi.TG_E_INVALID, f"used must be a token count, not {used!r}")
    c = ticket._take()
    charged = c_uint64(0)
    ms = int(_ffi.tg_now_ms()) if now_ms is None else now_ms
    st = _ffi.tg_settle(limiter._ptr(), byref(c), code, used, ms, byref(charged))
    if st:
        raise error_for(st, "tg_settle")
    return int(charged.value)


_SCAN_SIZE = int(_ffi.tg_usage_scan_size())


class UsageReader:
    """The library's streaming read of one response's usage
    (tg_usage_scan_*): feed it the body as it passes, then ``finish`` says
    how the response ended and what it used. ``None`` from :meth:`open`
    when the Content-Type is neither JSON nor SSE (nothing to read)."""

    __slots__ = ("_broken", "_mem", "_scan")

    def __init__(self, mem: ctypes.Array[ctypes.c_char], scan: int) -> None:
        self._mem = mem
        self._scan = scan
        self._broken = False

    @classmethod
    def open(cls, content_type: bytes | None) -> UsageReader | None:
        ct = content_type or b""
        # Aligned to 8 (TG_USAGE_SCAN_ALIGN): ctypes arrays of c_uint64 are.
        mem = (ctypes.c_uint64 * ((_SCAN_SIZE + 7) // 8))()
        out = c_void_p()
        st = _ffi.tg_usage_scan_init(ctypes.addressof(mem), _SCAN_SIZE, ct, len(ct), byref(out))
        if st == _ffi.TG_E_UNSUPPORTED:
            return None
        if st:
            raise error_for(st, "tg_usage_scan_init")
        return cls(mem, int(out.value or 0))  # type: ignore[arg-type]

    def feed(self, chunk: bytes) -> None:
        """Reads the next bytes of the body; a response that cannot be read
        stops being read (and ends as one without usage)."""
        if chunk and not self._broken and _ffi.tg_usage_scan_feed(self._scan, chunk, len(chunk)):
            self._broken = True

    def finish(self, status: int, cut: bool) -> tuple[int, int]:
        """How the response ended (a TG_END_* value) and the total tokens
        it reported, by the library's one rule."""
        u = _ffi.TgUsage()
        u.size = ctypes.sizeof(_ffi.TgUsage)
        st = _ffi.tg_usage_scan_finish(self._scan, status, 1 if cut else 0, byref(u))
        if st:
            raise error_for(st, "tg_usage_scan_finish")
        return int(u.ending), int(u.total)


def ending_without_body(status: int, cut: bool) -> int:
    """How a response whose body is not read ended (tg_usage_ending)."""
    return int(_ffi.tg_usage_ending(status, 1 if cut else 0))
