"""Policy, Limiter and Decision: a thin, typed layer over the C ABI."""

from __future__ import annotations

import ctypes
import enum
import logging
import math
import os
import struct
import sys
import threading
from collections.abc import Mapping
from ctypes import byref, c_size_t, c_uint32, c_uint64, c_void_p, create_string_buffer
from dataclasses import FrozenInstanceError, dataclass, fields
from operator import attrgetter
from typing import Any, Union

from . import _ffi
from .errors import (
    InvalidArgument,
    InvalidArgumentType,
    PolicyError,
    RegionError,
    TollgateError,
    constructor_error,
    error_for,
    shown,
)

__all__ = [
    "DEFAULT_SLOTS",
    "Decision",
    "LeaseStats",
    "Limiter",
    "Policy",
    "Stats",
    "Tier",
    "now_ms",
    "unknown_model_body",
]

StrOrBytes = Union[str, bytes]
#: A quota store option's value, handed to the library's parser as text:
#: ``{"hosts": 3, "deadline": "50ms", "down": "local", "mode": "exact"}``.
RedisOptionValue = Union[str, int]
TierLike = Union[str, int]
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: Slot count used when none is given: one slot per (account, model) key
#: seen today, so 65536 keys in a region of a few MiB.
DEFAULT_SLOTS = 65536


class Tier(enum.IntEnum):
    """Account tiers (TG_TIER_*). Anywhere a tier is taken, its name
    ("free", "developer", "enterprise", any case, as the library parses it)
    or its number works too."""

    FREE = _ffi.TG_TIER_FREE
    DEVELOPER = _ffi.TG_TIER_DEVELOPER
    ENTERPRISE = _ffi.TG_TIER_ENTERPRISE


# Tier names are the library's to parse (tg_tier_parse, the one parser every
# binding uses); what it answered is remembered here, so the hot path asks
# once per spelling. IntEnum members hash and compare like their ints, so one
# dict serves names, numbers and members. So would True and 1.0: the hot path
# looks a tier up only when its type is one of _TIER_TYPES.
_TIERS: dict[Any, int] = {int(t): int(t) for t in Tier}
_TIER_TYPES = frozenset({str, int, Tier})
_TIERS_CACHED = 64


def tier_parse(name: bytes) -> int | None:
    """TG_TIER_* for a tier name (tg_tier_parse), or None if it names none."""
    t = c_uint32()
    return int(t.value) if _ffi.tg_tier_parse(name, len(name), byref(t)) == _ffi.TG_OK else None


def _tier_value(tier: object) -> int:
    if isinstance(tier, str):
        name = tier.encode("utf-8", "replace")
        v = tier_parse(name)
        if v is not None:
            if type(tier) is str and len(_TIERS) < _TIERS_CACHED:
                _TIERS[tier] = v
            return v
        raise InvalidArgument(
            _ffi.TG_E_INVALID, f"unknown tier {shown(name)}: use free, developer or enterprise"
        )
    if isinstance(tier, int) and not isinstance(tier, bool):
        # Out-of-range numbers go to the library, which refuses them itself.
        if 0 <= tier <= 0xFFFFFFFF:
            return int(tier)
        raise InvalidArgument(_ffi.TG_E_INVALID, f"tier {tier} out of range")
    raise InvalidArgumentType(_ffi.TG_E_INVALID, f"tier must be a str or int, not {type(tier).__name__}")


def _encode(value: str, what: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError:
        pass
    try:
        # Undecodable bytes carried through str as surrogate escapes
        # (os.fsdecode style) get their bytes back.
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise InvalidArgument(
            _ffi.TG_E_INVALID, f"{what} is not encodable as UTF-8: lone surrogate at index {e.start}"
        ) from None


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, str):
        return _encode(value, what)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidArgumentType(_ffi.TG_E_INVALID, f"{what} must be str or bytes, not {type(value).__name__}")


def _fs_path(path: object, what: str) -> bytes:
    try:
        raw = os.fsencode(path)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentType(
            _ffi.TG_E_INVALID, f"{what} must be str, bytes or os.PathLike, not {type(path).__name__}"
        ) from None
    except UnicodeEncodeError as e:
        raise InvalidArgument(_ffi.TG_E_INVALID, f"{what} is not encodable: {e.reason}") from None
    if b"\0" in raw:
        # What open() says; the C side would silently stop at the NUL.
        raise InvalidArgument(_ffi.TG_E_INVALID, f"{what}: embedded null byte")
    return raw


# Encoded model names, cached: a service sees a dozen models, and the cache
# saves an encode (and, for bytes input, a decode) per call. Entries are
# (utf-8 bytes, str). Only names the library just decided on (so names its
# policy has, at most MODEL_NAME_MAX bytes each) are kept: an unknown model
# costs nothing once refused. Bounded as well, for policies with very many
# models.
_models: dict[object, tuple[bytes, str]] = {}
_MODELS_CACHED = 1024


def _model_entry(model: object) -> tuple[bytes, str]:
    mb = _as_bytes(model, "model")
    return mb, mb.decode("utf-8", "surrogateescape")


def _remember(model: object, entry: tuple[bytes, str]) -> None:
    if type(model) is str or type(model) is bytes:
        if len(_models) >= _MODELS_CACHED:
            _models.clear()
        _models[model] = entry


def now_ms() -> int:
    """The library's clock (CLOCK_REALTIME) in epoch milliseconds."""
    return int(_ffi.tg_now_ms())


def _ms(now: object) -> int:
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise InvalidArgumentType(
            _ffi.TG_E_INVALID, f"now must be epoch seconds as an int or float, not {type(now).__name__}"
        )
    if isinstance(now, float) and not math.isfinite(now):
        raise InvalidArgument(_ffi.TG_E_INVALID, f"now={now!r} is not a valid epoch time in seconds")
    ms = int(now * 1000)
    if not 0 <= ms < 1 << 64:
        raise InvalidArgument(_ffi.TG_E_INVALID, f"now={now!r} is not a valid epoch time in seconds")
    return ms


def unknown_model_body(model: StrOrBytes) -> bytes:
    """The library's OpenAI-shaped JSON body for a model the policy does not
    know, to send with a 404 (tg_unknown_model_body). It quotes ``model``
    whole: pass a bounded name (e.g. from :func:`tollgate.body_model`)."""
    mb = _as_bytes(model, "model")
    return _render(_ffi.tg_unknown_model_body, mb, len(mb))


# --- the hot path -----------------------------------------------------------
#
# A check is one ctypes call, tg_check_now(limiter, request, decision), whose
# three arguments are all made before the call, so ctypes converts nothing:
#   - the limiter: a byref() of a c_char at the handle's address, made once
#     per Limiter (a c_void_p would make a new argument object every call);
#   - the request: a bytes object holding a packed tg_request, which ctypes
#     passes as a pointer to its contents without copying. Its account and
#     model pointers are those of bytes objects kept beside it (a c_char_p
#     made from bytes points at their contents); the library only reads
#     requests, so every thread shares them. One is made per (model,
#     account) and kept in _requests with the tier and cost it was made
#     for, so a key seen before costs two dict lookups;
#   - the decision: this thread's buffer (a bytearray pinned by a ctypes
#     view), copied into the Decision, which unpacks it when a field is read.
#
# Every request carries TG_REQUEST_NO_WAIT, which a local table ignores. On a
# limiter joined to a quota store (redis=...), a decision that needs a round
# trip to Redis then comes back TG_PENDING at once, charging nothing, with
# the GIL held throughout as on any other call; check() then makes it again
# without the flag through a call that releases the GIL (_wait), so the
# process's other threads run while it waits (at most the store's
# deadline), and acheck() makes that call on the event loop's executor.
#
# The decision buffer is per thread, so threads never share one. The one way
# to clobber it is re-entry on the same thread between the call and the
# copy, i.e. calling check() from a signal handler or a finalizer: don't.

_REQUEST = _ffi.REQUEST_STRUCT
_DECISION_SIZE = ctypes.sizeof(_ffi.TgDecision)

#: Requests kept for keys seen before (about 240 bytes each); when that many
#: are kept, all are dropped and kept anew. A key not kept costs one request
#: build (about a microsecond) on its next check.
_REQUESTS_CACHED = 16384
# model -> account -> (request, model as str, account bytes, model bytes,
# tier and cost as given): what the request was built from, kept alive.
_requests: dict[object, dict[object, tuple[Any, str, bytes, bytes, object, object]]] = {}
_requests_kept = 0


def _keep_request(model: object, account: object) -> bool:
    """Whether a request for (model, account) may be kept, making room if
    needed: only exact str and bytes keys (whose equality is their value),
    and at most _REQUESTS_CACHED of them (all dropped when full)."""
    global _requests_kept
    if _REQUESTS_CACHED <= 0 or type(model) not in _KEY_TYPES or type(account) not in _KEY_TYPES:
        return False
    if _requests_kept >= _REQUESTS_CACHED:
        _requests.clear()
        _requests_kept = 0
    _requests_kept += 1
    return True


_KEY_TYPES = frozenset({str, bytes})

_tls = threading.local()


def _address(b: bytes) -> int:
    """Where ctypes passes a bytes object's contents from: their own storage
    (bytes are passed, and stored in a c_char_p, without copying)."""
    return c_void_p.from_buffer(ctypes.c_char_p(b)).value or 0


def _packed_request(a: bytes, mb: bytes, t: int, cost: int, rpm: int, rpd: int) -> Any:
    """A tg_request for ``a`` and ``mb`` (which the caller keeps alive as long
    as the result is used), as check() passes it (never waiting for the
    quota store: TG_REQUEST_NO_WAIT): packed into a bytes object, or a
    byref() of a ctypes copy if its contents are not aligned for the struct
    (not seen in CPython, whose objects are 16-aligned)."""
    try:
        req = _REQUEST.pack(
            _REQUEST.size, _address(a), len(a), _address(mb), len(mb), t, cost, rpm, rpd, 0, _ffi.TG_REQUEST_NO_WAIT
        )
    except struct.error:
        raise _bad_numbers(cost, rpm, rpd) from None
    return _aligned(req)


def _aligned(req: bytes) -> Any:
    if _address(req) % 8:  # pragma: no cover
        return byref(_ffi.TgRequest.from_buffer_copy(req))
    return req


def _blocking_request(req: Any) -> Any:
    """The same request without TG_REQUEST_NO_WAIT (the flags are its last
    field): the one that may wait for the quota store."""
    raw = req if type(req) is bytes else bytes(req._obj)
    return _aligned(raw[: _ffi.REQUEST_FLAGS_OFFSET] + bytes(4))


def _decision_buffer() -> tuple[Any, Any]:
    # A bytearray, not a ctypes buffer: struct reads it without ctypes
    # computing a buffer format on every call. The ctypes view pins it (a
    # bytearray with an exported buffer cannot be resized or moved) and
    # gives the pointer argument.
    buf: Any = bytearray(_DECISION_SIZE)
    view: Any = (ctypes.c_char * _DECISION_SIZE).from_buffer(buf)
    if ctypes.addressof(view) % 8:  # not aligned for the struct: take ctypes' own memory
        view = create_string_buffer(_DECISION_SIZE)
        buf = view
    out = (buf, byref(view))
    _tls.out = out
    return out


_LIMITED_BY = (None, "minute", "day")
_new = object.__new__
_unpack = _ffi.DECISION_OUT.unpack_from
_check_raw = _ffi.fast_check
_check_now_raw = _ffi.fast_check_now
_wait_check = _ffi.wait_check
_wait_check_now = _ffi.wait_check_now
_PENDING = _ffi.TG_PENDING


class _Gate:
    """Calls on a handle that release the GIL (those that may wait for the
    quota store) against those that need the handle alone (set_policy,
    close): the library forbids them to overlap, which the GIL alone
    ensures for every other call. Waiting calls share the gate; a call
    that needs the handle alone waits for them to leave, and keeps new ones
    out until it is done."""

    __slots__ = ("_alone", "_cond", "_inside")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._alone = False

    def enter(self) -> None:
        with self._cond:
            while self._alone:
                self._cond.wait()
            self._inside += 1

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            if not self._inside:
                self._cond.notify_all()

    def lock(self) -> None:
        with self._cond:
            while self._alone:
                self._cond.wait()
            self._alone = True
            while self._inside:
                self._cond.wait()

    def unlock(self) -> None:
        with self._cond:
            self._alone = False
            self._cond.notify_all()


# How the lease layer's event levels (tg_limiter_lease_event) are logged,
# and how often a joined limiter's events are read.
_EVENT_LEVELS = {_ffi.TG_LOG_ERROR: logging.ERROR, _ffi.TG_LOG_WARN: logging.WARNING, _ffi.TG_LOG_INFO: logging.INFO}
_EVENT_EVERY = 0.5
_EVENT_LEN = 1024


class _LeaseEvents:
    """Logs the events of one link to a quota store (Redis unavailable, with
    its reason, and answering again; the breaker; the backlog pushed;
    evictions) to the ``tollgate`` logger, each once, from a daemon thread
    of its own that reads tg_limiter_lease_event every half second: the
    library's threads never call into Python.

    Every live handle on the link (the joined limiter and its shares) is
    registered. The thread reads through one of them under the lock, and a
    handle is dropped under the lock before it is freed, so a freed handle
    is never read. The thread holds no limiter (limiters are collected as
    usual) and ends once its last handle is dropped."""

    __slots__ = ("_handles", "_lock", "_retired", "_thread", "_wake")

    def __init__(self, h: c_void_p) -> None:
        # Reentrant: a limiter may be collected on this very thread (a
        # finalizer run by a collection during a read) and drop its handle.
        self._lock = threading.RLock()
        self._handles: list[c_void_p] = [h]
        self._retired: list[c_void_p] = []
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tollgate-lease-events", daemon=True)
        self._thread.start()

    def add(self, h: c_void_p) -> None:
        with self._lock:
            self._handles.append(h)

    def drop(self, h: c_void_p) -> bool:
        """Unregisters ``h``, about to be freed. False when called on the
        thread itself (a finalizer run there, maybe in the middle of a
        read): the thread frees ``h`` once past its read."""
        with self._lock:
            self._handles = [x for x in self._handles if x is not h]
            if not self._handles:
                self._wake.set()
            if threading.get_ident() != self._thread.ident:
                return True
            self._retired.append(h)
            return False

    def _run(self) -> None:
        log = logging.getLogger("tollgate")
        seq, level = c_uint64(), c_uint32()
        text = create_string_buffer(_EVENT_LEN)
        read = _ffi.tg_limiter_lease_event
        while True:
            got: list[tuple[int, bytes]] = []
            with self._lock:
                while self._handles and len(got) < 64:
                    st = read(self._handles[0], byref(seq), byref(level), text, _EVENT_LEN)
                    if st != _ffi.TG_OK or not level.value:
                        break
                    got.append((level.value, text.value))
                retired, self._retired = self._retired, []
                done = not self._handles
            for h in retired:
                _ffi.tg_limiter_free(h)
            for lv, raw in got:
                log.log(_EVENT_LEVELS.get(lv, logging.WARNING), "%s", raw.decode("utf-8", "replace"))
            if done:
                return
            self._wake.wait(_EVENT_EVERY)


class _Pending(Exception):
    """Internal, raised by a no-wait decision that needs the quota store
    (TG_PENDING: nothing was charged): ``decide`` makes it, waiting."""

    def __init__(self, limiter: Limiter, req: Any, now: float | None, a: bytes, mb: bytes, ms: str) -> None:
        super().__init__("pending")
        self.decide_args = (req, now, a, mb, ms)
        self.limiter = limiter

    def decide(self) -> Decision:
        return self.limiter._wait(*self.decide_args)


def _render(fn: Any, dec: Any, *extra: Any) -> bytes:
    """Calls a tg_* renderer (buffer, cap, written last), growing the buffer
    once if needed."""
    cap = 512
    for _ in range(2):
        buf = create_string_buffer(cap)
        written = c_size_t(0)
        st = fn(dec, *extra, buf, cap, byref(written))
        if st == _ffi.TG_OK:
            return buf.raw[: written.value]
        if st != _ffi.TG_E_BUFFER_TOO_SMALL:
            raise error_for(st, fn.__name__)
        cap = written.value + 1
    raise TollgateError(_ffi.TG_E_BUFFER_TOO_SMALL, f"{fn.__name__}: buffer size keeps growing")


def _collect_header(out: list[tuple[bytes, bytes]], name: Any, name_len: int, value: Any, value_len: int) -> int:
    out.append((name[:name_len], value[:value_len]))
    return 0


# One tg_header_fn for every call: ``ctx`` is the list a call collects into.
_COLLECT = _ffi.HEADER_FN(_collect_header)


def answer_headers(answer: _ffi.TgAnswer) -> list[tuple[bytes, bytes]]:
    """The headers of a tg_answer as (name, value) byte pairs, in the
    library's order, names in lower case (tg_answer_headers)."""
    out: list[tuple[bytes, bytes]] = []
    st = _ffi.tg_answer_headers(byref(answer), _COLLECT, out)
    if st:
        raise error_for(st, "tg_answer_headers")
    return out


def _decision_pairs(d: _ffi.TgDecision, now_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    """The library's header pairs for a decision: the six (and retry-after)
    (tg_decision_header_pairs), or with ``now_ms`` the IETF fields
    (tg_decision_ietf_header_pairs)."""
    out: list[tuple[bytes, bytes]] = []
    if now_ms is None:
        st = _ffi.tg_decision_header_pairs(byref(d), _COLLECT, out)
    else:
        st = _ffi.tg_decision_ietf_header_pairs(byref(d), c_uint64(now_ms), _COLLECT, out)
    if st:
        raise error_for(st, "tg_decision_header_pairs")
    return out


@dataclass(init=False, eq=False)
class Decision:
    """The outcome of one check. ``allowed`` is the verdict; ``limited_by`` is
    "minute", "day" or None; resets are epoch seconds; ``retry_after`` is in
    whole seconds (0 when allowed). Truthy when allowed.

    A dataclass whose fields cannot be assigned (FrozenInstanceError, as a
    frozen one) and whose values are the library's tg_decision as it wrote
    it: making one is a copy of those bytes, and they are unpacked when a
    field other than ``allowed`` and ``model`` is first read. Equal (and
    hashed) by its fields."""

    __slots__ = ("_fields", "_model", "_raw")

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
    def header_items(self) -> list[tuple[bytes, bytes]]:
        """The headers as (name, value) byte pairs in the library's order,
        names in lower case (the shape ASGI and WSGI servers take)."""
        return _decision_pairs(self._c())

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
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in _decision_pairs(self._c(), ms)}

    @property
    def error_body(self) -> str:
        """The OpenAI-shaped 429 JSON body naming the model and the limit hit
        (tg_decision_error_body)."""
        mb = self._model.encode("utf-8", "surrogateescape")
        return _render(_ffi.tg_decision_error_body, self._c(), mb, len(mb)).decode("utf-8", "replace")


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


@dataclass(frozen=True)
class Stats:
    """Counters of a limiter's region (tg_limiter_stats)."""

    slots: int
    used: int
    table_full: int
    region_bytes: int
    layout_version: int
    #: Decisions that met counts a wrong clock had dated beyond the
    #: clock-fault bound and re-dated them (see the README's guarantees).
    clock_faults: int = 0


_MODES = {_ffi.TG_REDIS_LEASES: "leases", _ffi.TG_REDIS_EXACT: "exact"}
_DOWN = {_ffi.TG_DOWN_LOCAL: "local", _ffi.TG_DOWN_OPEN: "open", _ffi.TG_DOWN_CLOSED: "closed"}
_BREAKER = {_ffi.TG_BREAKER_CLOSED: "closed", _ffi.TG_BREAKER_OPEN: "open", _ffi.TG_BREAKER_HALF_OPEN: "half_open"}


@dataclass(frozen=True)
class LeaseStats:
    """What a limiter joined to a quota store did since it joined, over
    every handle sharing its link (tg_limiter_lease_stats)."""

    #: "leases" (units held and spent locally) or "exact" (one round trip
    #: per decision), as the ``mode`` option names them.
    mode: str
    #: The ``down`` policy in force: "local", "open" or "closed".
    down_policy: str
    #: The last store call failed for want of Redis: decisions beyond the
    #: units held follow the down policy.
    redis_down: bool
    #: The store's circuit breaker: "closed", "open" or "half_open".
    breaker: str
    #: Connections to Redis open now.
    connections: int
    #: Decisions made (every outcome), and of those, made from units held
    #: with no round trip.
    decisions: int
    from_leases: int
    #: Grants asked by decisions (one round trip each), and ahead of need
    #: by the lease thread for hot keys.
    refills: int
    top_ups: int
    granted_units: int
    #: Grants of nothing: the key was at its global limit.
    refused_by_store: int
    #: Decisions made by the down policy, and of those, admitted.
    degraded: int
    degraded_admitted: int
    give_backs: int
    given_back_units: int
    #: Spends made while Redis was away, pushed when it came back.
    pushes: int
    pushed_units: int
    #: Units dropped after an outage rather than given back.
    dropped_units: int
    #: Give-backs, pushes and recoveries waiting for Redis.
    pending: int
    #: No-wait calls answered "pending" (made again off the event loop).
    deferred: int
    #: Microseconds the last answered store call took.
    last_latency_us: int
    #: Store calls made, failed, timed out, failed fast by the breaker;
    #: breaker trips; connections opened.
    store_calls: int
    store_failures: int
    store_timeouts: int
    store_circuit_open: int
    store_trips: int
    store_connects: int
    #: The hosts each quota is shared by now: as configured, or as Redis
    #: last counted them (``hosts`` "auto", the default).
    hosts: int
    #: Redis has a memory limit and a ``maxmemory-policy`` that can evict
    #: the limiter's counts (all but ``noeviction``).
    eviction_risk: bool = False
    #: Decisions refused without a round trip: Redis refused the key less
    #: than a second before and its window was still full.
    refused_locally: int = 0
    #: Keys Redis evicted since this limiter joined (any keys).
    evicted_keys: int = 0


def _store_url(url: object) -> bytes:
    if isinstance(url, str):
        raw = _encode(url, "redis URL")
    elif isinstance(url, bytes):
        raw = url
    else:
        raise InvalidArgumentType(_ffi.TG_E_INVALID, f"redis must be a URL as str, not {type(url).__name__}")
    if b"\0" in raw:
        raise InvalidArgument(_ffi.TG_E_INVALID, "redis URL: embedded null byte")
    return raw


def _store_options(options: Mapping[str, RedisOptionValue] | None) -> _ffi.TgRedisOptions:
    """The options struct, every option set by the library's parser from
    its text (tg_redis_options_set): which names exist and what values they
    take is the library's to say."""
    o = _ffi.TgRedisOptions()
    o.size = ctypes.sizeof(o)
    if options is None:
        return o
    if not isinstance(options, Mapping):
        raise InvalidArgumentType(
            _ffi.TG_E_INVALID, f"redis_options must be a mapping of names to values, not {type(options).__name__}"
        )
    for name, value in options.items():
        if not isinstance(name, str):
            raise InvalidArgumentType(_ffi.TG_E_INVALID, f"redis option names are str, not {type(name).__name__}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InvalidArgumentType(
                _ffi.TG_E_INVALID, f"redis option {name!r} must be a str or int, not {type(value).__name__}"
            )
        nb = _encode(name, "redis option name")
        vb = _encode(value if isinstance(value, str) else str(int(value)), f"redis option {name!r}")
        st = _ffi.tg_redis_options_set(byref(o), nb, len(nb), vb, len(vb))
        if st:
            raise constructor_error(st, f"redis option {name!r}")
    return o


class _Handle:
    """Owns one library pointer; freed once, by close() or at collection.

    At interpreter shutdown nothing is freed: module globals may already be
    gone and daemon threads may still be inside the library; the process is
    ending and the kernel reclaims memory (a file-backed region is kept by
    the file itself).
    """

    __slots__ = ("__weakref__", "_free", "_h")
    _is_finalizing = staticmethod(sys.is_finalizing)

    def __init__(self, h: c_void_p, free: Any) -> None:
        self._h: c_void_p | None = h
        self._free = free

    @property
    def closed(self) -> bool:
        """True once close() has run."""
        return self._h is None

    def close(self) -> None:
        """Frees the native object now. Idempotent. Must not race with calls
        on the same object in other threads."""
        h, self._h = self._h, None
        if h is not None:
            self._free(h)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._is_finalizing():
                return
            self.close()
        except Exception:  # noqa: BLE001, S110 - a finalizer must not raise, whatever is half torn down
            pass

    def _ptr(self) -> c_void_p:
        h = self._h
        if h is None:
            raise InvalidArgument(_ffi.TG_E_NULL, f"{type(self).__name__} is closed")
        return h


class Policy(_Handle):
    """A validated rate-limit policy: models, and per-tier limits per model.

    Build one with :meth:`default`, :meth:`load` or :meth:`parse`.
    """

    __slots__ = ()

    def __init__(self, *_: object) -> None:
        raise TypeError("use Policy.default(), Policy.load(path) or Policy.parse(text)")

    @classmethod
    def _wrap(cls, h: c_void_p) -> Policy:
        p = _new(cls)
        _Handle.__init__(p, h, _ffi.tg_policy_free)
        return p

    @classmethod
    def default(cls) -> Policy:
        """The built-in policy: the published Developer tier table."""
        h = c_void_p()
        st = _ffi.tg_policy_default(byref(h))
        if st:
            raise error_for(st, "tg_policy_default")
        return cls._wrap(h)

    @classmethod
    def load(cls, path: PathLike) -> Policy:
        """Reads a TOML policy file. Raises PolicyError (with ``file`` and
        ``line``) when it is unreadable or invalid."""
        raw = _fs_path(path, "policy path")
        err = create_string_buffer(1024)
        h = c_void_p()
        st = _ffi.tg_policy_load(raw, byref(h), err, len(err))
        if st:
            raise error_for(st, f"tg_policy_load({os.fsdecode(raw)})", err.value.decode("utf-8", "replace"), PolicyError)
        return cls._wrap(h)

    @classmethod
    def parse(cls, text: StrOrBytes) -> Policy:
        """Parses TOML policy text. Raises PolicyError on invalid text."""
        raw = _as_bytes(text, "text")
        err = create_string_buffer(1024)
        h = c_void_p()
        st = _ffi.tg_policy_parse(raw, len(raw), byref(h), err, len(err))
        if st:
            raise error_for(st, "tg_policy_parse", err.value.decode("utf-8", "replace"), PolicyError)
        return cls._wrap(h)

    def limits(self, model: StrOrBytes, tier: TierLike = "developer", account: StrOrBytes | None = None) -> tuple[int, int]:
        """``(rpm, rpd)`` this policy gives ``tier`` on ``model``; enterprise
        tiers look up ``account``'s plan first (tg_policy_limits)."""
        mb = _as_bytes(model, "model")
        ab = b"" if account is None else _as_bytes(account, "account")
        rpm, rpd = c_uint32(), c_uint32()
        st = _ffi.tg_policy_limits(
            self._ptr(), _tier_value(tier), mb, len(mb), ab or None, len(ab), byref(rpm), byref(rpd)
        )
        if st:
            raise error_for(st, f"limits for model {shown(mb)}")
        return int(rpm.value), int(rpd.value)

    @property
    def models(self) -> list[str]:
        """The model ids this policy names, in its order."""
        h = self._ptr()
        count = c_uint32()
        st = _ffi.tg_policy_model_count(h, byref(count))
        if st:
            raise error_for(st, "tg_policy_model_count")
        out = []
        for i in range(count.value):
            name, n = c_void_p(), c_size_t()
            st = _ffi.tg_policy_model_name(h, i, byref(name), byref(n))
            if st:
                raise error_for(st, "tg_policy_model_name")
            out.append(ctypes.string_at(name.value or 0, n.value).decode("utf-8", "surrogateescape"))
        return out

    def __repr__(self) -> str:
        return f"<tollgate.Policy{' closed' if self.closed else ''}>"


class Limiter(_Handle):
    """Per-(account, model) RPM and RPD limits over fixed UTC minute and day
    windows, decided by libtollgate. Thread-safe: share one per process (or,
    with :meth:`open`, one table file across processes).

    ``Limiter(policy, slots=...)`` keeps its counters in process memory.

    With ``redis="redis://host:port/db"`` (or ``redis+cluster://host:port,
    ...`` for a Cluster) the limiter holds one quota per (account, model)
    across every host joined to that Redis: its table is made for quota
    leases and joined to the store, with ``redis_options`` (a mapping of
    option name to value, e.g. ``{"hosts": 3, "deadline": "50ms", "down":
    "local"}``; names and values are the library's, see the README). Redis
    down, or answering errors (BUSY, LOADING, a refused password), is not
    an error: decisions follow the down policy until it serves,
    :meth:`lease_stats` says so, and the ``tollgate`` logger tells each
    change (from a daemon thread per joined link). Raises StoreError for a
    URL it cannot use, InvalidArgument for a bad option, each with the
    library's words.
    """

    __slots__ = ("_events", "_gate", "_hp", "_joined", "_path", "_policy")

    def __init__(
        self,
        policy: Policy | None = None,
        slots: int = DEFAULT_SLOTS,
        *,
        redis: str | None = None,
        redis_options: Mapping[str, RedisOptionValue] | None = None,
    ) -> None:
        if policy is None:
            policy = Policy.default()
        join = _join_args(redis, redis_options)
        h = c_void_p()
        n = _u32(slots, "slots")
        if join is None:
            st = _ffi.tg_limiter_new(policy._ptr(), n, byref(h))
            if st:
                raise constructor_error(st, f"tg_limiter_new(slots={slots})")
        else:
            o = _ffi.TgLimiterOptions(size=ctypes.sizeof(_ffi.TgLimiterOptions), flags=_ffi.TG_OPEN_LEASES, slots=n)
            st = _ffi.tg_limiter_make(policy._ptr(), byref(o), byref(h))
            if st:
                raise constructor_error(st, f"tg_limiter_make(leases, slots={slots})")
        self._start(h, policy, None)
        if join is not None:
            self._connect(*join)

    def _start(self, h: c_void_p, policy: Policy, path: str | None) -> None:
        _Handle.__init__(self, h, _ffi.tg_limiter_free)
        # The handle as check() passes it: a pointer argument ctypes takes as
        # it is (see "the hot path"); None, i.e. NULL, once closed.
        self._hp: Any = byref(ctypes.c_char.from_address(h.value or 0))
        self._policy: Policy = policy
        self._path: str | None = path
        self._gate = _Gate()
        self._joined = False
        self._events: _LeaseEvents | None = None

    def _connect(self, url: bytes, opts: _ffi.TgRedisOptions) -> None:
        # A handle no other thread has yet: connect may wait for Redis
        # (at most the deadline) without the GIL.
        st = _ffi.tg_limiter_connect(self._ptr(), url, byref(opts))
        if st:
            err = constructor_error(st, "tg_limiter_connect", RegionError, self._path)
            self.close()
            raise err
        self._joined = True
        # Redis down or answering errors at the join is no failure: the
        # events say so (and when it serves again) in the ``tollgate`` log.
        self._events = _LeaseEvents(self._ptr())

    def close(self) -> None:
        """Frees the table now (a file-backed one stays in its file). On a
        limiter joined to a quota store, leaves it first: once the last
        handle sharing the link lets go, unspent units go back to Redis
        (each call under the deadline). Waits for decisions in flight that
        wait for the store. Idempotent. Must not race with other calls on
        the same object in other threads."""
        gate = self._gate
        gate.lock()
        try:
            self._hp = None
            events, self._events = self._events, None
            if events is not None and self._h is not None and not events.drop(self._h):
                self._h = None  # freed by the events thread (see _LeaseEvents.drop)
            _Handle.close(self)
        finally:
            gate.unlock()

    @classmethod
    def open(
        cls,
        path: PathLike,
        policy: Policy | None = None,
        slots: int = DEFAULT_SLOTS,
        create: bool = True,
        *,
        redis: str | None = None,
        redis_options: Mapping[str, RedisOptionValue] | None = None,
    ) -> Limiter:
        """A limiter whose counters live in the file at ``path``, mapped
        shared: every process (e.g. each worker of a server) that opens the
        same file shares the same limits. ``create`` makes and formats the
        file, with ``slots`` slots, if it does not exist. An existing file
        must hold ``slots`` slots, or ``slots`` is 0: the file is taken as it
        is (with ``create`` on or off). Raises RegionError if the file cannot
        be used.

        With ``redis`` (and ``redis_options``, as for :class:`Limiter`), the
        file holds quota leases for one quota across hosts: one file per
        host, every process of the host opening it with the same ``redis``.
        ``create`` makes it so; an existing file must have been made so
        (NotLeased otherwise). A file made so and opened without ``redis``
        decides nothing (NotJoined)."""
        if policy is None:
            policy = Policy.default()
        join = _join_args(redis, redis_options)
        raw = _fs_path(path, "path")
        h = c_void_p()
        flags = _ffi.TG_OPEN_CREATE if create else 0
        if join is not None:
            flags |= _ffi.TG_OPEN_LEASES
        n = _u32(slots, "slots")
        st = _ffi.tg_limiter_open(policy._ptr(), raw, n, flags, byref(h))
        if st:
            name = os.fsdecode(raw)
            raise constructor_error(st, f"tg_limiter_open({name}, slots={slots})", RegionError, name)
        lim = _new(cls)
        lim._start(h, policy, os.fsdecode(raw))
        if join is not None:
            lim._connect(*join)
        return lim

    @property
    def policy(self) -> Policy:
        """The policy last given to this limiter."""
        return self._policy

    @property
    def path(self) -> str | None:
        """The table file for a limiter made by :meth:`open`, else None."""
        return self._path

    def check(
        self,
        account: StrOrBytes,
        model: StrOrBytes,
        tier: TierLike = "developer",
        cost: int = 1,
        now: float | None = None,
        rpm: int | None = None,
        rpd: int | None = None,
    ) -> Decision:
        """Decides one request and counts it if admitted (both windows or
        neither). ``now`` is epoch seconds (float); None reads the library's
        clock. ``rpm``/``rpd`` override the policy's limits (None or 0: from
        the policy). ``cost`` 0 looks without counting (see :meth:`peek`).

        Raises UnknownModel, NoLimitConfigured, CostTooLarge, TableFull or
        InvalidArgument; a denial is not an error but a Decision with
        ``allowed`` False.
        """
        # Hot path, kept flat: see "the hot path" above. A key seen before is
        # two lookups and two identity checks; an equal tier or cost that is
        # another object is compared by type and value (True == 1 == 1.0,
        # and bools and floats are refused), then the request is rebuilt.
        if rpm is None and rpd is None:
            try:
                req, ms, a, mb, t0, c0 = _requests[model][account]
            except (KeyError, TypeError):  # TypeError: unhashable, e.g. a bytearray
                return self._check_new(True, account, model, tier, cost, now, None, None)
            if (t0 is not tier and not (type(tier) is type(t0) and tier == t0)) or (
                c0 is not cost and not (type(cost) is int and cost == c0)
            ):
                return self._check_new(True, account, model, tier, cost, now, None, None)
            try:
                buf, out = _tls.out
            except AttributeError:
                buf, out = _decision_buffer()
            if now is None:
                st = _check_now_raw(self._hp, req, out)
            else:
                st = _check_raw(self._hp, req, c_uint64(_ms(now)), out)
            if st:
                if st == _PENDING:
                    return self._wait(req, now, a, mb, ms)
                raise self._error(st, a, mb)
            d = _new(Decision)
            d._raw = bytes(buf)
            d._model = ms
            d._fields = None
            return d
        return self._check_new(False, account, model, tier, cost, now, rpm, rpd)

    async def acheck(
        self,
        account: StrOrBytes,
        model: StrOrBytes,
        tier: TierLike = "developer",
        cost: int = 1,
        now: float | None = None,
        rpm: int | None = None,
        rpd: int | None = None,
    ) -> Decision:
        """:meth:`check` for asyncio: the same decision, and the event loop
        never waits for the quota store. On a local table, or when the
        units this host holds suffice, it is decided at once; a decision
        that needs a round trip to Redis is made on the loop's default
        executor (``loop.run_in_executor``) and awaited."""
        try:
            return self._check_no_wait(account, model, tier, cost, now, rpm, rpd)
        except _Pending as p:
            import asyncio

            return await asyncio.get_running_loop().run_in_executor(None, p.decide)

    def _check_no_wait(
        self, account: object, model: object, tier: object, cost: object, now: float | None, rpm: object, rpd: object
    ) -> Decision:
        # check() that raises _Pending instead of waiting for the store; a
        # key seen before reuses its request, as in check().
        if rpm is None and rpd is None:
            try:
                req, ms, a, mb, t0, c0 = _requests[model][account]
            except (KeyError, TypeError):
                return self._check_new(True, account, model, tier, cost, now, None, None, False)
            if (t0 is tier or (type(tier) is type(t0) and tier == t0)) and (
                c0 is cost or (type(cost) is int and cost == c0)
            ):
                return self._decide(req, now, a, mb, ms, False)
            return self._check_new(True, account, model, tier, cost, now, None, None, False)
        return self._check_new(False, account, model, tier, cost, now, rpm, rpd, False)

    def _wait(self, req: Any, now: float | None, a: bytes, mb: bytes, ms: str) -> Decision:
        # The decision TG_PENDING deferred, made by a call that may wait for
        # the quota store (at most its deadline) without the GIL.
        blocking = _blocking_request(req)
        try:
            buf, out = _tls.out
        except AttributeError:
            buf, out = _decision_buffer()
        if now is None:
            st = self._waiting_call(_wait_check_now, blocking, out)
        else:
            st = self._waiting_call(_wait_check, blocking, c_uint64(_ms(now)), out)
        if st:
            raise self._error(st, a, mb)
        d = _new(Decision)
        d._raw = bytes(buf)
        d._model = ms
        d._fields = None
        return d

    def _waiting_call(self, fn: Any, *args: Any) -> int:
        """``fn(handle, *args)``, a library call that releases the GIL and may
        wait for the quota store, inside the gate (see _Gate)."""
        gate = self._gate
        gate.enter()
        try:
            hp = self._hp
            if hp is None:
                raise InvalidArgument(_ffi.TG_E_NULL, "Limiter is closed")
            return int(fn(hp, *args))
        finally:
            gate.leave()

    def _check_new(
        self,
        keep: bool,
        account: object,
        model: object,
        tier: object,
        cost: object,
        now: float | None,
        rpm: object,
        rpd: object,
        wait: bool = True,
    ) -> Decision:
        # A key not seen before (or with rpm/rpd, which are not cached): its
        # request is built, decided, and kept if ``keep`` and the library took
        # it (so names it refused cost nothing once refused). A decision that
        # needs the quota store waits for it, or without ``wait`` raises
        # _Pending.
        try:
            mb, ms = _models[model]
            new_model = False
        except (KeyError, TypeError):
            mb, ms = _model_entry(model)
            new_model = True
        a = _as_bytes(account, "account")
        t = _tier_value(tier)
        n_cost, n_rpm, n_rpd = _numbers(cost, rpm, rpd)
        req = _packed_request(a, mb, t, n_cost, n_rpm or 0, n_rpd or 0)
        d = self._decide(req, now, a, mb, ms, wait)
        if new_model:
            _remember(model, (mb, ms))
        if keep and type(tier) in _TIER_TYPES and _keep_request(model, account):
            _requests.setdefault(model, {})[account] = (req, ms, a, mb, tier, cost)
        return d

    def _decide(self, req: Any, now: float | None, a: bytes, mb: bytes, ms: str, wait: bool) -> Decision:
        try:
            buf, out = _tls.out
        except AttributeError:
            buf, out = _decision_buffer()
        if now is None:
            st = _check_now_raw(self._hp, req, out)
        else:
            st = _check_raw(self._hp, req, c_uint64(_ms(now)), out)
        if st:
            if st != _PENDING:
                raise self._error(st, a, mb)
            if not wait:
                raise _Pending(self, req, now, a, mb, ms)
            return self._wait(req, now, a, mb, ms)
        d = _new(Decision)
        d._raw = bytes(buf)
        d._model = ms
        d._fields = None
        return d

    def _error(self, st: int, a: bytes, mb: bytes) -> TollgateError:
        if self._h is None:
            return InvalidArgument(_ffi.TG_E_NULL, "Limiter is closed")
        return error_for(st, f"account {shown(a)}, model {shown(mb)}")

    def peek(
        self,
        account: StrOrBytes,
        model: StrOrBytes,
        tier: TierLike = "developer",
        now: float | None = None,
        rpm: int | None = None,
        rpd: int | None = None,
    ) -> Decision:
        """Where (account, model) stands, without counting anything (cost 0)."""
        return self.check(account, model, tier, 0, now, rpm, rpd)

    def set_policy(self, policy: Policy) -> None:
        """Swaps in a new policy (copied); counters are kept and compared
        against the new limits. Safe while other threads of this process
        call check(): every call on a limiter holds the GIL, so none overlap.
        Other processes sharing the table keep their own policies."""
        gate = self._gate
        gate.lock()
        try:
            st = _ffi.tg_limiter_set_policy(self._ptr(), policy._ptr())
        finally:
            gate.unlock()
        if st:
            raise error_for(st, "tg_limiter_set_policy")
        self._policy = policy

    def share(self, policy: Policy | None = None) -> Limiter:
        """A second Limiter on the same counters with another policy (copied;
        None: this one's). The table lives until its last Limiter is closed
        (tg_limiter_share). A joined limiter's share is joined too, to the
        same link."""
        if policy is None:
            policy = self._policy
        h = c_void_p()
        st = _ffi.tg_limiter_share(self._ptr(), policy._ptr(), byref(h))
        if st:
            raise constructor_error(st, "tg_limiter_share", RegionError, self._path)
        lim = _new(type(self))
        lim._start(h, policy, self._path)
        lim._joined = self._joined
        if self._events is not None:
            self._events.add(h)
            lim._events = self._events
        return lim

    def stats(self, now: float | None = None) -> Stats:
        """Slot usage of the region as of ``now`` (epoch seconds; None = the
        library's clock)."""
        out = _ffi.TgStats()
        ms = int(_ffi.tg_now_ms()) if now is None else _ms(now)
        st = _ffi.tg_limiter_stats(self._ptr(), ms, byref(out))
        if st:
            raise error_for(st, "tg_limiter_stats")
        return Stats(out.slots, out.used, out.table_full, out.region_bytes, out.layout_version, out.clock_faults)

    def lease_stats(self) -> LeaseStats | None:
        """The quota store's counters (mode, Redis up or down, latency,
        refills, fallbacks; tg_limiter_lease_stats), or None for a limiter
        not joined to one."""
        out = _ffi.TgLeaseStats()
        out.size = ctypes.sizeof(out)
        st = _ffi.tg_limiter_lease_stats(self._ptr(), byref(out))
        if st == _ffi.TG_E_NOT_JOINED:
            return None
        if st:
            raise error_for(st, "tg_limiter_lease_stats")
        return LeaseStats(
            _MODES.get(out.mode, str(out.mode)),
            _DOWN.get(out.down_policy, str(out.down_policy)),
            bool(out.redis_down),
            _BREAKER.get(out.breaker, str(out.breaker)),
            int(out.connections),
            **{name: int(getattr(out, name)) for name in _ffi.LEASE_COUNTERS},
            hosts=int(out.hosts),
            eviction_risk=bool(out.eviction_risk),
            refused_locally=int(out.refused_locally),
            evicted_keys=int(out.evicted_keys),
        )

    def __repr__(self) -> str:
        where = f" path={self._path!r}" if self._path else ""
        joined = " joined" if self._joined and not self.closed else ""
        return f"<tollgate.Limiter{where}{joined}{' closed' if self.closed else ''}>"


def _join_args(
    redis: object, redis_options: Mapping[str, RedisOptionValue] | None
) -> tuple[bytes, _ffi.TgRedisOptions] | None:
    """The URL and options struct to join with, checked before any table is
    made (so a bad option leaves no file behind); None without ``redis``."""
    if redis is None:
        if redis_options is not None:
            raise InvalidArgument(_ffi.TG_E_INVALID, "redis_options needs redis (the quota store's URL)")
        return None
    return _store_url(redis), _store_options(redis_options)


def _u32(v: object, what: str) -> int:
    # bool is an int subclass, but True is not a count.
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgumentType(_ffi.TG_E_INVALID, f"{what} must be an int, not {type(v).__name__}")
    if not 0 <= v <= 0xFFFFFFFF:
        raise InvalidArgument(_ffi.TG_E_INVALID, f"{what}={v} out of range 0..{0xFFFFFFFF}")
    return int(v)


def _numbers(cost: object, rpm: object, rpd: object) -> tuple[int, int | None, int | None]:
    """cost, rpm and rpd checked and made plain ints (int subclasses such as
    IntEnum pass; bool does not)."""
    return (
        _u32(cost, "cost"),
        None if rpm is None else _u32(rpm, "rpm"),
        None if rpd is None else _u32(rpd, "rpd"),
    )


def _bad_numbers(cost: object, rpm: object, rpd: object) -> Exception:
    try:
        _numbers(cost, rpm, rpd)
    except InvalidArgument as e:
        return e
    return InvalidArgument(_ffi.TG_E_INVALID, "bad numeric argument")
