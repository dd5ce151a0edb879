"""Policy, Limiter and Decision: a thin, typed layer over the C ABI."""

from __future__ import annotations

import ctypes
import enum
import math
import os
import struct
import sys
import threading
from ctypes import byref, c_size_t, c_uint32, c_uint64, c_void_p, create_string_buffer
from dataclasses import dataclass
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

__all__ = ["DEFAULT_SLOTS", "Decision", "Limiter", "Policy", "Stats", "Tier", "now_ms", "unknown_model_body"]

StrOrBytes = Union[str, bytes]
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
# ctypes Structures cost a Python-level conversion per field. Instead, each
# thread owns one small buffer holding a tg_request and the tg_decision the
# library writes: one struct.pack_into fills the request, one unpack_from
# reads the decision, and no ctypes object is made per call.
#
# The request's account/model pointers point straight at the bytes objects'
# own storage (CPython keeps it at a fixed offset from id()); the objects are
# held by local variables for the whole call, and bytes are immutable. The
# offset is verified at import; elsewhere (not CPython) every call takes the
# ctypes Structure path instead, which is slower but needs no such knowledge.
#
# The buffer is per thread, so threads never share one. The one way to clobber
# it is re-entry on the same thread between pack and unpack, i.e. calling
# check() from a signal handler or a finalizer: don't.


def _bytes_data_offset() -> int | None:
    if sys.implementation.name != "cpython":
        return None
    off = bytes.__basicsize__ - 1  # offsetof(PyBytesObject, ob_sval)
    probe = b"tollgate \x00\xff probe"
    try:
        if ctypes.string_at(id(probe) + off, len(probe)) == probe:
            return off
    except (OSError, ValueError):  # string_at refused the address
        return None
    return None


_DATA = _bytes_data_offset()  # also None when _draft_works() is False (set below)
_DECISION_OFF = (_ffi.REQUEST_STRUCT.size + 15) // 16 * 16
_SCRATCH_SIZE = _DECISION_OFF + ctypes.sizeof(_ffi.TgDecision)

_tls = threading.local()


def _scratch() -> tuple[Any, c_void_p, c_void_p, Any]:
    # A bytearray, not a ctypes buffer: struct reads and writes it without
    # ctypes computing a buffer format on every call. The ctypes view pins it
    # (a bytearray with an exported buffer cannot be resized or moved) and
    # gives its address.
    buf: Any = bytearray(_SCRATCH_SIZE)
    view = (ctypes.c_char * _SCRATCH_SIZE).from_buffer(buf)
    base = ctypes.addressof(view)
    if base % 8:  # not aligned for the structs: take ctypes' own memory
        view = create_string_buffer(_SCRATCH_SIZE)
        buf = view
        base = ctypes.addressof(view)
    sc = (buf, c_void_p(base), c_void_p(base + _DECISION_OFF), view)
    _tls.sc = sc
    return sc


_LIMITED_BY = (None, "minute", "day")
_new = object.__new__
_set = object.__setattr__
_pack = _ffi.REQUEST_STRUCT.pack_into
_unpack = _ffi.DECISION_STRUCT.unpack_from
_fast_check = _ffi.fast_check
_fast_check_now = _ffi.fast_check_now


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


def _collect_header(out: list[tuple[bytes, bytes]], name: int, name_len: int, value: int, value_len: int) -> int:
    out.append((_string_at(name, name_len), _string_at(value, value_len)))
    return 0


_string_at = ctypes.string_at
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


_DECISION_FIELDS = (
    "allowed",
    "limited_by",
    "minute_limit",
    "minute_remaining",
    "minute_reset",
    "day_limit",
    "day_remaining",
    "day_reset",
    "retry_after",
    "model",
)
# Slots past the fields cache what the library rendered (not fields: they
# take no part in equality, hashing or repr).
_DECISION_SLOTS = _DECISION_FIELDS + ("_header_items", "_error_body")


@dataclass(frozen=True)
class Decision:
    """The outcome of one check. ``allowed`` is the verdict; ``limited_by`` is
    "minute", "day" or None; resets are epoch seconds; ``retry_after`` is in
    whole seconds (0 when allowed). Truthy when allowed."""

    __slots__ = _DECISION_SLOTS

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

    def __bool__(self) -> bool:
        return self.allowed

    def _c(self) -> _ffi.TgDecision:
        d = _ffi.TgDecision()
        _ffi.DECISION_STRUCT.pack_into(
            d,
            0,
            0,
            1 if self.allowed else 0,
            _LIMITED_BY.index(self.limited_by),
            self.minute_limit,
            self.minute_remaining,
            self.minute_reset,
            self.day_limit,
            self.day_remaining,
            self.day_reset,
            self.retry_after,
        )
        return d

    @property
    def header_items(self) -> list[tuple[bytes, bytes]]:
        """The headers as (name, value) byte pairs in the library's order,
        names in lower case (the shape ASGI and WSGI servers take)."""
        cached = getattr(self, "_header_items", None)
        if cached is None:
            cached = tuple(_decision_pairs(self._c()))
            _set(self, "_header_items", cached)
        return list(cached)

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
        body: str | None = getattr(self, "_error_body", None)
        if body is None:
            mb = self.model.encode("utf-8", "surrogateescape")
            body = _render(_ffi.tg_decision_error_body, self._c(), mb, len(mb)).decode("utf-8", "replace")
            _set(self, "_error_body", body)
        return body


_ANSWER_DECISION_OFF = _ffi.TgAnswer.decision.offset


def decision_from_answer(answer: _ffi.TgAnswer, model: str) -> Decision:
    """The Decision inside a tg_answer (one unpack, and the draft's plain
    slot stores when they work: see "the hot path")."""
    _, al, lb, ml, mr, mrs, dl, dr, drs, ra = _unpack(answer, _ANSWER_DECISION_OFF)
    if not _DRAFT_WORKS:
        return Decision(al == 1, _LIMITED_BY[lb], ml, mr, mrs, dl, dr, drs, ra, model)
    d = _new(_DecisionDraft)
    d.allowed = al == 1
    d.limited_by = _LIMITED_BY[lb]
    d.minute_limit = ml
    d.minute_remaining = mr
    d.minute_reset = mrs
    d.day_limit = dl
    d.day_remaining = dr
    d.day_reset = drs
    d.retry_after = ra
    d.model = model
    d.__class__ = Decision  # type: ignore[assignment]
    return d  # type: ignore[return-value]


class _DecisionDraft:
    """A Decision under construction: the same slots, without the frozen
    dataclass's __setattr__ (a Python function that refuses every store).
    The hot path fills one with plain slot stores, then makes it a Decision
    by assigning __class__ (allowed: identical layouts), well under half the
    cost of going through Decision's own __init__."""

    __slots__ = _DECISION_SLOTS

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


def _draft_works() -> bool:
    try:
        d: Any = _new(_DecisionDraft)
        names: list[Any] = list(_DECISION_FIELDS)
        for name in names:
            setattr(d, name, name)
        d.__class__ = Decision
        return type(d) is Decision and bool(d == Decision(*names))
    except TypeError:
        return False


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
    """

    __slots__ = ("_path", "_policy")

    def __init__(self, policy: Policy | None = None, slots: int = DEFAULT_SLOTS) -> None:
        if policy is None:
            policy = Policy.default()
        h = c_void_p()
        st = _ffi.tg_limiter_new(policy._ptr(), _u32(slots, "slots"), byref(h))
        if st:
            raise constructor_error(st, f"tg_limiter_new(slots={slots})")
        _Handle.__init__(self, h, _ffi.tg_limiter_free)
        self._policy: Policy = policy
        self._path: str | None = None

    @classmethod
    def open(
        cls, path: PathLike, policy: Policy | None = None, slots: int = DEFAULT_SLOTS, create: bool = True
    ) -> Limiter:
        """A limiter whose counters live in the file at ``path``, mapped
        shared: every process (e.g. each worker of a server) that opens the
        same file shares the same limits. ``create`` makes and formats the
        file if it does not exist. Raises RegionError if the file cannot be
        used."""
        if policy is None:
            policy = Policy.default()
        raw = _fs_path(path, "path")
        h = c_void_p()
        flags = _ffi.TG_OPEN_CREATE if create else 0
        n = _u32(slots, "slots")
        st = _ffi.tg_limiter_open(policy._ptr(), raw, n, flags, byref(h))
        if st:
            name = os.fsdecode(raw)
            raise constructor_error(st, f"tg_limiter_open({name}, slots={slots})", RegionError, name)
        lim = _new(cls)
        _Handle.__init__(lim, h, _ffi.tg_limiter_free)
        lim._policy = policy
        lim._path = os.fsdecode(raw)
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
        # Hot path, kept flat: see "the hot path" above.
        try:
            mb, ms = _models[model]
            new_model = False
        except (KeyError, TypeError):
            mb, ms = _model_entry(model)
            new_model = True
        if type(account) is str:
            try:
                a = account.encode()
            except UnicodeEncodeError:  # lone surrogates, e.g. from os.fsdecode
                a = _encode(account, "account")
        elif type(account) is bytes:
            a = account
        else:
            a = _as_bytes(account, "account")
        if type(tier) in _TIER_TYPES:  # never bool or float (True == 1 == 1.0)
            try:
                t = _TIERS[tier]
            except KeyError:
                t = _tier_value(tier)
        else:
            t = _tier_value(tier)
        if type(cost) is not int or (rpm is not None and type(rpm) is not int) or (
            rpd is not None and type(rpd) is not int
        ):
            cost, rpm, rpd = _numbers(cost, rpm, rpd)
        if _DATA is None:
            dec = self._check_struct(a, mb, ms, t, cost, now, rpm, rpd)
            if new_model:
                _remember(model, (mb, ms))
            return dec
        try:
            buf, reqp, decp, _ = _tls.sc
        except AttributeError:
            buf, reqp, decp, _ = _scratch()
        try:
            _pack(buf, 0, 0, id(a) + _DATA, len(a), id(mb) + _DATA, len(mb), t, cost, rpm or 0, rpd or 0)
        except struct.error:
            raise _bad_numbers(cost, rpm, rpd) from None
        if now is None:
            st = _fast_check_now(self._h, reqp, decp)
        else:
            st = _fast_check(self._h, reqp, c_uint64(_ms(now)), decp)
        if st:
            raise self._error(st, a, mb)
        if new_model:
            _remember(model, (mb, ms))
        _, al, lb, ml, mr, mrs, dl, dr, drs, ra = _unpack(buf, _DECISION_OFF)
        d = _new(_DecisionDraft)
        d.allowed = al == 1
        d.limited_by = _LIMITED_BY[lb]
        d.minute_limit = ml
        d.minute_remaining = mr
        d.minute_reset = mrs
        d.day_limit = dl
        d.day_remaining = dr
        d.day_reset = drs
        d.retry_after = ra
        d.model = ms
        d.__class__ = Decision  # type: ignore[assignment]
        return d  # type: ignore[return-value]

    def _check_struct(
        self, a: bytes, mb: bytes, ms: str, t: int, cost: int, now: float | None, rpm: int | None, rpd: int | None
    ) -> Decision:
        # The portable path (see "the hot path"): ctypes Structures throughout.
        req = _ffi.TgRequest()
        try:
            req.account, req.account_len, req.model, req.model_len = a, len(a), mb, len(mb)
            req.tier, req.cost, req.rpm, req.rpd = t, _u32(cost, "cost"), _u32(rpm or 0, "rpm"), _u32(rpd or 0, "rpd")
        except (TypeError, ValueError):
            raise _bad_numbers(cost, rpm, rpd) from None
        out = _ffi.TgDecision()
        h = self._h
        if now is None:
            st = _ffi.tg_check_now(h, byref(req), byref(out))
        else:
            st = _ffi.tg_check(h, byref(req), _ms(now), byref(out))
        if st:
            raise self._error(st, a, mb)
        return Decision(
            bool(out.allowed),
            _LIMITED_BY[out.limited_by],
            out.minute_limit,
            out.minute_remaining,
            out.minute_reset,
            out.day_limit,
            out.day_remaining,
            out.day_reset,
            out.retry_after,
            ms,
        )

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
        st = _ffi.tg_limiter_set_policy(self._ptr(), policy._ptr())
        if st:
            raise error_for(st, "tg_limiter_set_policy")
        self._policy = policy

    def share(self, policy: Policy | None = None) -> Limiter:
        """A second Limiter on the same counters with another policy (copied;
        None: this one's). The table lives until its last Limiter is closed
        (tg_limiter_share)."""
        if policy is None:
            policy = self._policy
        h = c_void_p()
        st = _ffi.tg_limiter_share(self._ptr(), policy._ptr(), byref(h))
        if st:
            raise constructor_error(st, "tg_limiter_share", RegionError, self._path)
        lim = _new(type(self))
        _Handle.__init__(lim, h, _ffi.tg_limiter_free)
        lim._policy = policy
        lim._path = self._path
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

    def __repr__(self) -> str:
        where = f" path={self._path!r}" if self._path else ""
        return f"<tollgate.Limiter{where}{' closed' if self.closed else ''}>"


_DRAFT_WORKS = _draft_works()
if not _DRAFT_WORKS:
    _DATA = None


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
