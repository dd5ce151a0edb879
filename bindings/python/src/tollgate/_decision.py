"""Decision, the outcome of one check: the library's tg_decision bytes,
unpacked when read, and its headers and 429 body as the library renders
them."""

from __future__ import annotations

import ctypes
import struct
import sys
from dataclasses import FrozenInstanceError, dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from . import _ffi
from ._args import _ms
from ._in_flight import Admission, Ending, InFlight
from ._render import _decision_pairs, _render
from ._tokens import TokenWindows, _c_of

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from 3.11; only annotations need it

__all__ = ["Decision", "decision_from_answer"]

_DECISION_SIZE = ctypes.sizeof(_ffi.TgDecision)
_LIMITED_BY = (None, "minute", "day", "tokens_minute", "tokens_day", "in_flight")
_new = object.__new__
_unpack = _ffi.DECISION_OUT.unpack_from


@dataclass(init=False, eq=False)
class Decision:
    """The outcome of one check. ``allowed`` is the verdict; ``limited_by`` is
    "minute", "day", "tokens_minute", "tokens_day", "in_flight" or None;
    resets are epoch seconds; ``retry_after`` is in whole seconds (0 when
    allowed, and for a refusal for in-flight, which no window dates). Truthy
    when allowed.

    For a key with an in-flight limit, ``in_flight`` has the limit and the
    requests running, and an admitted decision holds a unit until
    :meth:`release` (once; later calls do nothing). As a context manager it
    releases on exit, "cut" if an exception escaped, else "complete"; a
    decision collected (or left at exit) unreleased releases as "cut". A
    decision of a key without one releases nothing.

    A dataclass whose fields cannot be assigned (FrozenInstanceError, as a
    frozen one) and whose values are the library's tg_decision as it wrote
    it: making one is a copy of those bytes, and they are unpacked when a
    field other than ``allowed`` and ``model`` is first read. Equal (and
    hashed) by its fields."""

    # __weakref__: an admitted decision's unit is released as cut when it
    # is collected unreleased (weakref.finalize, see _in_flight).
    __slots__ = ("__weakref__", "_admission", "_fields", "_in_flight", "_model", "_raw", "_tokens")

    allowed: bool
    limited_by: str | None
    minute_limit: int
    minute_remaining: int
    minute_reset: int
    day_limit: int
    day_remaining: int
    day_reset: int
    retry_after: int
    model: str

    def __init__(
        self,
        allowed: bool,
        limited_by: str | None,
        minute_limit: int,
        minute_remaining: int,
        minute_reset: int,
        day_limit: int,
        day_remaining: int,
        day_reset: int,
        retry_after: int,
        model: str,
    ) -> None:
        raw = _ffi.DECISION_STRUCT.pack(
            0,
            1 if allowed else 0,
            _LIMITED_BY.index(limited_by),
            minute_limit,
            minute_remaining,
            minute_reset,
            day_limit,
            day_remaining,
            day_reset,
            retry_after,
        )
        self._raw = raw.ljust(_DECISION_SIZE, b"\0")
        self._model = model
        self._fields: tuple[Any, ...] | None = None

    def _unpacked(self) -> tuple[Any, ...]:
        # allowed, limited_by's number, minute_limit, ..., retry_after
        v = self._fields
        if v is None:
            v = self._fields = _unpack(self._raw)
        return v

    def _values(self) -> tuple[Any, ...]:
        al, lb, ml, mr, mrs, dl, dr, drs, ra = self._unpacked()
        return (al, _LIMITED_BY[lb], ml, mr, mrs, dl, dr, drs, ra, self._model)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle: the fields, to __init__
        return (type(self), self._values())

    def __bool__(self) -> bool:
        return self._raw[_ALLOWED_BYTE] != 0

    def _c(self) -> _ffi.TgDecision:
        return _ffi.TgDecision.from_buffer_copy(self._raw)

    @property
    def tokens(self) -> TokenWindows | None:
        """The key's token windows and this decision's reservation (with
        the ``ticket`` to settle), when the check reserved tokens on a key
        with a token limit; else None."""
        return getattr(self, "_tokens", None)

    @property
    def in_flight(self) -> InFlight | None:
        """The key's in-flight limit, its requests running (this one included
        when admitted) and whether this decision holds a unit, when the key
        has an in-flight limit; else None."""
        return getattr(self, "_in_flight", None)

    @property
    def released(self) -> bool:
        """True once the unit this decision held is released (and for a
        decision that holds none)."""
        a: Admission | None = getattr(self, "_admission", None)
        return a is None or a.released

    def release(self, ending: Ending = "complete") -> int | None:
        """Gives back the in-flight unit this decision holds, once its
        request has ended, whatever ended it: ``ending`` is "complete" (ran
        to its end), "failed" (a non-2xx) or "usage" (counted completed),
        or "cut" (an exception, a cancelled task, the client gone: counted
        aborted); a TG_END_* value too. Returns the key's requests still
        running, or None when nothing was released: the decision holds no
        unit, or released it already (a second call does nothing).
        InvalidArgument for another ``ending`` or a closed Limiter."""
        a: Admission | None = getattr(self, "_admission", None)
        return None if a is None else a.release(ending)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self.release("complete" if kind is None else "cut")

    @property
    def header_items(self) -> list[tuple[bytes, bytes]]:
        """The headers as (name, value) byte pairs in the library's order,
        names in lower case (the shape ASGI and WSGI servers take): the six,
        the six token headers when the key has a token limit, the two
        in-flight headers when it has an in-flight limit, then
        ``retry-after`` when denied by a window."""
        return _decision_pairs(self._c(), tokens=self._c_tokens(), in_flight=self._c_in_flight())

    def _c_in_flight(self) -> _ffi.TgInFlight | None:
        """The decision's requests in flight as the renderers take them (the
        admission left out: they only render)."""
        f: InFlight | None = getattr(self, "_in_flight", None)
        if f is None:
            return None
        return _ffi.TgInFlight(ctypes.sizeof(_ffi.TgInFlight), 1, f.limit, f.in_use, 0)

    def _c_tokens(self) -> _ffi.TgTokens | None:
        t = self.tokens
        return None if t is None else _c_of(t)

    @property
    def headers(self) -> dict[str, str]:
        """The six ``x-ratelimit-*`` headers, plus ``retry-after`` when denied
        (tg_decision_headers)."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.header_items}

    def ietf_headers(self, now: float | None = None) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` fields of the IETF draft
        (tg_decision_ietf_headers); ``t`` counts from ``now`` (epoch seconds,
        None = the library's clock)."""
        ms = int(_ffi.tg_now_ms()) if now is None else _ms(now)
        pairs = _decision_pairs(self._c(), ms, self._c_tokens(), self._c_in_flight())
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in pairs}

    @property
    def error_body(self) -> str:
        """The OpenAI-shaped 429 JSON body naming the model and the limit hit
        (tg_decision_error_body)."""
        mb = self._model.encode("utf-8", "surrogateescape")
        toks, fly = self._c_tokens(), self._c_in_flight()
        body = _render(
            _ffi.tg_decision_units_error_body,
            self._c(),
            None if toks is None else ctypes.byref(toks),
            None if fly is None else ctypes.byref(fly),
            mb,
            len(mb),
        )
        return body.decode("utf-8", "replace")


# `allowed` is 0 or 1: its low byte says which.
_ALLOWED_BYTE = _ffi.TgDecision.allowed.offset + (0 if sys.byteorder == "little" else 3)


def _field(i: int, name: str) -> property:
    """Decision field ``name``, the i-th: read-only, like a frozen dataclass's
    (set after @dataclass, which would take a class attribute of a field's
    name for its default)."""

    def assign(self: Decision, _: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def delete(self: Decision) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    get: Any
    if name == "allowed":

        def get(self: Decision) -> bool:
            return self._raw[_ALLOWED_BYTE] != 0

    elif name == "model":
        get = attrgetter("_model")
    elif name == "limited_by":

        def get(self: Decision) -> str | None:
            return _LIMITED_BY[self._unpacked()[1]]

    else:

        def get(self: Decision) -> int:
            v = self._fields
            if v is None:
                v = self._unpacked()
            value: int = v[i]
            return value

    return property(get, assign, delete, f"The decision's {name}.")


for _i, _f in enumerate(fields(Decision)):
    setattr(Decision, _f.name, _field(_i, _f.name))
del _i, _f

_ANSWER_DECISION_OFF = _ffi.TgAnswer.decision.offset
_decision_bytes = struct.Struct(f"{_DECISION_SIZE}s").unpack_from


def decision_from_answer(answer: _ffi.TgAnswer, model: str) -> Decision:
    """The Decision inside a tg_answer."""
    d = _new(Decision)
    (d._raw,) = _decision_bytes(answer, _ANSWER_DECISION_OFF)
    d._model = model
    d._fields = None
    return d
