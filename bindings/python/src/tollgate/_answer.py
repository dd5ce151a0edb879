"""The core's whole HTTP answer (tg_answer_request, tg_answer_for): status,
headers and body for every outcome, decided and rendered by the library, so
this package holds no answer text of its own."""

from __future__ import annotations

import ctypes
import struct
from ctypes import byref, c_uint32, c_uint64

from . import _ffi
from ._decision import Decision, decision_from_answer
from ._in_flight import IN_FLIGHT_STRUCT, attach
from ._limiter import Limiter
from ._render import answer_body, answer_headers
from ._tokens import TokenWindows, windows_from_c
from .errors import InvalidArgument, error_for

__all__ = ["Answer", "answer_for", "answer_request", "answer_request_waiting", "method_limited", "outcome_name"]


def outcome_name(outcome: int) -> str:
    """The name of a TG_OUTCOME_* value ("PASSED", "REJECTED", ...)."""
    raw = _ffi.tg_outcome_name(outcome)
    return raw.decode("ascii") if raw else ""


def method_limited(method: str | bytes) -> bool:
    """True if the core limits requests with this method (only POST)."""
    m = method.encode("latin-1") if isinstance(method, str) else method
    return bool(_ffi.tg_method_limited(m, len(m)))


class Answer:
    """What the core decided for one request. ``status`` is the HTTP status
    to answer with, or 0: pass upstream with ``headers`` added to the
    upstream's response. ``headers`` are (name, value) byte pairs, names in
    lower case, in the library's order; ``body`` is the JSON body (empty
    when passing).

    For a key with an in-flight limit, an admitted answer's ``decision``
    holds the unit: release it with ``answer.decision.release(ending)`` once
    the response has ended (it is released as cut if the answer and its
    decision are collected first)."""

    __slots__ = ("_c", "_decision", "_headers", "_limiter")

    def __init__(self, c: _ffi.TgAnswer, limiter: Limiter | None = None) -> None:
        self._c = c
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._decision: Decision | None = None
        self._limiter = limiter
        if limiter is not None and _admission_of(c):
            # Made now, so that its finalizer guards the unit even if no one
            # reads the decision.
            self.decision  # noqa: B018

    @property
    def status(self) -> int:
        return int(self._c.http_status)

    @property
    def would_status(self) -> int:
        """In a dry run, the status that was not sent; 0 otherwise."""
        return int(self._c.would_status)

    @property
    def outcome(self) -> str:
        """TG_OUTCOME_* by name: PASSED, REJECTED, DRY_RUN, TABLE_FULL,
        UNKNOWN_MODEL, BAD_REQUEST, NO_LIMIT, NO_ACCOUNT, ERROR, NOT_LIMITED."""
        return outcome_name(self._c.outcome)

    @property
    def decision(self) -> Decision | None:
        """The limiter's decision, when there was one (with its ``tokens``
        when the key has a token limit)."""
        c = self._c
        if self._decision is None and c.has_decision:
            model = c.model[: c.model_len].decode("utf-8", "surrogateescape")
            d = decision_from_answer(c, model)
            d._tokens = windows_from_c(c.tokens)  # type: ignore[attr-defined]
            if self._limiter is not None:
                attach(d, self._limiter, *IN_FLIGHT_STRUCT.unpack_from(c, _IN_FLIGHT_OFF)[1:])
            self._decision = d
        return self._decision

    @property
    def tokens(self) -> TokenWindows | None:
        """The decision's token windows and reservation (its ``ticket`` to
        settle once the response has ended), when the key has a token
        limit; else None."""
        d = self.decision
        return None if d is None else d.tokens

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The answer's headers (tg_answer_headers)."""
        if self._headers is None:
            self._headers = answer_headers(self._c)
        return list(self._headers)

    @property
    def body(self) -> bytes:
        """The answer's JSON body (tg_answer_body); b"" when it passes."""
        return answer_body(self._c)


_IN_FLIGHT_OFF = _ffi.TgAnswer.in_flight.offset
_ADMISSION_OFF = _IN_FLIGHT_OFF + _ffi.TgInFlight.admission.offset
_u64_at = struct.Struct("@Q").unpack_from


def _admission_of(c: _ffi.TgAnswer) -> int:
    """The answer's admission (0: none), read without making ctypes field
    objects (once per request in the middleware)."""
    return int(_u64_at(c, _ADMISSION_OFF)[0])


def answer_request(
    limiter: Limiter,
    method: bytes,
    account: bytes | None,
    tier: bytes,
    body: bytes,
    cost: int,
    flags: int,
    refuse_status: int,
    now: int | None = None,
) -> Answer | None:
    """The core's answer to a whole request (tg_answer_request: method,
    account, body model, tier, then the limit, in the order every binding
    takes them). ``now`` is epoch milliseconds (None: the library's clock).
    None only when ``flags`` has TG_ANSWER_NO_WAIT and the decision needs a
    round trip to the quota store (TG_PENDING, nothing charged): answer it
    with :func:`answer_request_waiting` on a thread that may block."""
    hp = limiter._hp
    if hp is None:
        limiter._ptr()  # raises: closed
    # ctypes points the request's fields at the bytes objects' own storage
    # (no copy; the Structure keeps them alive for the call). The call's
    # arguments are all ctypes objects, so it converts none of them (see
    # _ffi.fast_answer_request).
    req = _ffi.TgHttpRequest(
        0, cost, method, len(method), account, len(account or b""), tier, len(tier), body, len(body)
    )
    out = _ffi.TgAnswer()
    out.size = _ANSWER_SIZE
    ms = c_uint64(_now() if now is None else now)
    st = _answer_raw(hp, byref(req), ms, c_uint32(flags), c_uint32(refuse_status), byref(out))
    if st:
        if st == _ffi.TG_PENDING:
            return None
        raise error_for(st, "tg_answer_request")
    return Answer(out, limiter)


def answer_request_waiting(
    limiter: Limiter,
    method: bytes,
    account: bytes | None,
    tier: bytes,
    body: bytes,
    cost: int,
    flags: int,
    refuse_status: int,
) -> Answer:
    """:func:`answer_request` that may wait for the quota store (at most its
    deadline) and releases the GIL meanwhile, at the library's clock: for a
    thread that may block (an event loop's executor), after the no-wait call
    answered None. TG_ANSWER_NO_WAIT in ``flags`` is dropped."""
    req = _ffi.TgHttpRequest(
        0, cost, method, len(method), account, len(account or b""), tier, len(tier), body, len(body)
    )
    out = _ffi.TgAnswer()
    out.size = _ANSWER_SIZE
    st = limiter._waiting_call(
        _ffi.wait_answer_request,
        byref(req),
        c_uint64(_now()),
        c_uint32(flags & ~_ffi.TG_ANSWER_NO_WAIT),
        c_uint32(refuse_status),
        byref(out),
    )
    if st:
        raise error_for(st, "tg_answer_request")
    return Answer(out, limiter)


_answer_raw = _ffi.fast_answer_request
# This layout's size: the library then writes the token windows too.
_ANSWER_SIZE = ctypes.sizeof(_ffi.TgAnswer)
# tg_now_ms as the hot path calls it: no argument to convert.
_now = _ffi._pylib["tg_now_ms"]
_now.restype = c_uint64


def answer_for(status: int, model: bytes, flags: int, refuse_status: int) -> Answer:
    """The core's answer to what happened without a decision (``status``: a
    TG_E_BODY_* refusal, TG_E_NO_ACCOUNT, ...) on ``model`` (echoed)."""
    if status == _ffi.TG_OK:
        raise InvalidArgument(_ffi.TG_E_INVALID, "answer_for needs a failure status")
    out = _ffi.TgAnswer()
    st = _ffi.tg_answer_for(status, None, model, len(model), flags, refuse_status, byref(out))
    if st:
        raise error_for(st, "tg_answer_for")
    return Answer(out)
