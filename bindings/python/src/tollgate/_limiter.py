"""Limiter: its constructors, check() and the hot path behind it, acheck(),
and the region's counters (Stats)."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Mapping
from ctypes import byref, c_uint64, c_void_p, create_string_buffer
from dataclasses import dataclass
from typing import Any

from . import _ffi
from ._args import PathLike, StrOrBytes, _as_bytes, _bad_numbers, _fs_path, _ms, _numbers, _u32
from ._decision import _DECISION_SIZE, Decision
from ._handle import _Gate, _Handle
from ._in_flight import InFlightStats, attach
from ._leases import LeaseStats, RedisOptionValue, _join_args, _LeaseEvents, read_lease_stats
from ._policy import Policy
from ._tier import _TIER_TYPES, TierLike, _tier_value
from ._tokens import Ticket, windows_from_c
from ._tokens import settle as _settle
from .errors import (
    InvalidArgument,
    InvalidArgumentType,
    RegionError,
    TollgateError,
    constructor_error,
    error_for,
    shown,
)

__all__ = ["DEFAULT_SLOTS", "Limiter", "Stats"]

#: Slot count used when none is given: one slot per (account, model) key
#: seen today, so 65536 keys in a region of a few MiB.
DEFAULT_SLOTS = 65536

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


_new = object.__new__
_check_raw = _ffi.fast_check
_check_now_raw = _ffi.fast_check_now
_wait_check = _ffi.wait_check
_wait_check_now = _ffi.wait_check_now
_PENDING = _ffi.TG_PENDING
# tg_check's answer for a key with an in-flight limit: nothing decided, and
# the decision is made again by tg_check_units, which hands out the
# admission (_units). Keys without one keep the one-call hot path.
_NO_IN_FLIGHT = _ffi.TG_E_NO_IN_FLIGHT


class _Pending(Exception):
    """Internal, raised by a no-wait decision that needs the quota store
    (TG_PENDING: nothing was charged): ``decide`` makes it, waiting."""

    def __init__(self, limiter: Limiter, req: Any, now: float | None, a: bytes, mb: bytes, ms: str) -> None:
        super().__init__("pending")
        self.decide_args = (req, now, a, mb, ms)
        self.limiter = limiter

    def decide(self) -> Decision:
        return self.limiter._wait(*self.decide_args)


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
    #: The table's requests in flight and their releases by cause, in a
    #: table with the in-flight areas; else None.
    in_flight: InFlightStats | None = None


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
        *,
        tokens: int | None = None,
        tpm: int | None = None,
        tpd: int | None = None,
    ) -> Decision:
        """Decides one request and counts it if admitted (both windows or
        neither). ``now`` is epoch seconds (float); None reads the library's
        clock. ``rpm``/``rpd`` override the policy's limits (None or 0: from
        the policy). ``cost`` 0 looks without counting (see :meth:`peek`).

        ``tokens`` reserves that many tokens on a key with a token limit
        (the policy's ``tpm``/``tpd``, or ``tpm``/``tpd`` here), all or
        nothing with the request counts: the Decision's ``tokens`` then has
        the token windows and the reservation's ``ticket``, which
        :meth:`settle` settles once the response's usage is known
        (docs/tokens.md).

        On a key with an in-flight limit (the policy's ``max_in_flight``)
        an admitted Decision holds one of the key's units until its
        ``release(ending)``; use it as a context manager to release on exit
        (docs/in-flight.md)::

            with limiter.check(account, model) as d:
                if d.allowed:
                    ...  # serve the request; the unit comes back on exit

        Raises UnknownModel, NoLimitConfigured, CostTooLarge,
        TokensTooLarge, TableFull, NoInFlight or InvalidArgument; a denial
        is not an error but a Decision with ``allowed`` False.
        """
        if tokens is not None or tpm is not None or tpd is not None:
            return self._check_tokens(account, model, tier, cost, now, rpm, rpd, tokens, tpm, tpd)
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
                if st == _NO_IN_FLIGHT:
                    return self._units_packed(req, now, a, mb, ms)
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
        *,
        tokens: int | None = None,
        tpm: int | None = None,
        tpd: int | None = None,
    ) -> Decision:
        """:meth:`check` for asyncio: the same decision, and the event loop
        never waits for the quota store. On a local table, or when the
        units this host holds suffice, it is decided at once; a decision
        that needs a round trip to Redis is made on the loop's default
        executor (``loop.run_in_executor``) and awaited. With ``tokens``
        (token limits are local to a table: no round trip) it is decided
        at once."""
        if tokens is not None or tpm is not None or tpd is not None:
            return self._check_tokens(account, model, tier, cost, now, rpm, rpd, tokens, tpm, tpd)
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
            if st == _NO_IN_FLIGHT:
                return self._units_packed(req, now, a, mb, ms)
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

    def _check_tokens(
        self,
        account: object,
        model: object,
        tier: object,
        cost: object,
        now: float | None,
        rpm: object,
        rpd: object,
        tokens: object,
        tpm: object,
        tpd: object,
    ) -> Decision:
        # A check with a token reservation: not the packed hot path, whose
        # request is the 0.3 layout.
        mb, ms = _model_entry(model)
        a = _as_bytes(account, "account")
        t = _tier_value(tier)
        n_cost, n_rpm, n_rpd = _numbers(cost, rpm, rpd)
        n_tokens, n_tpm, n_tpd = _numbers(0 if tokens is None else tokens, tpm, tpd)
        req = _ffi.TgRequestTokens()
        req.account, req.account_len = a, len(a)
        req.model, req.model_len = mb, len(mb)
        req.tier, req.cost = t, n_cost
        req.rpm, req.rpd = n_rpm or 0, n_rpd or 0
        req.tokens, req.tpm, req.tpd = n_tokens, n_tpm or 0, n_tpd or 0
        return self._units(req, now, a, mb, ms)

    def _units_packed(self, req: Any, now: float | None, a: bytes, mb: bytes, ms: str) -> Decision:
        """A packed request (the hot path's) decided by tg_check_units: the
        same request in the token layout, no tokens asked. Its account and
        model point into ``a`` and ``mb``, which the caller keeps alive."""
        raw = req if type(req) is bytes else bytes(req._obj)
        full = raw + bytes(ctypes.sizeof(_ffi.TgRequestTokens) - len(raw))
        return self._units(_ffi.TgRequestTokens.from_buffer_copy(full), now, a, mb, ms)

    def _units(self, req: _ffi.TgRequestTokens, now: float | None, a: bytes, mb: bytes, ms: str) -> Decision:
        # tg_check_units: the decision, the token windows and reservation,
        # and the requests in flight with the admission to release (every
        # check that needs more than the hot path's one call: a key with
        # tokens asked or an in-flight limit).
        req.size = ctypes.sizeof(_ffi.TgRequestTokens)
        out = _ffi.TgDecision()
        toks = _ffi.TgTokens()
        toks.size = ctypes.sizeof(_ffi.TgTokens)
        f = _ffi.TgInFlight()
        f.size = ctypes.sizeof(_ffi.TgInFlight)
        ms_now = int(_ffi.tg_now_ms()) if now is None else _ms(now)
        st = _ffi.tg_check_units(self._ptr(), byref(req), ms_now, byref(out), byref(toks), byref(f))
        if st:
            raise self._error(st, a, mb)
        d = _new(Decision)
        d._raw = bytes(out)
        d._model = ms
        d._fields = None
        d._tokens = windows_from_c(toks)  # type: ignore[attr-defined]
        attach(d, self, f.has_in_flight, f.limit, f.in_use, f.admission)
        return d

    def settle(self, ticket: Ticket, used: int | None = None, *, ending: str | None = None, now: float | None = None) -> int:
        """Settles a reservation once its response has ended: ``used`` is the
        total tokens its usage reported (the key is charged that instead of
        the reservation), or, without usage, ``ending`` says how it ended:
        "complete" (a 2xx: kept), "failed" (a non-2xx: the policy's
        ``on_failed``, default given back) or "cut" (client gone, upstream
        reset: ``on_cut``, default kept). Returns the tokens the key is
        charged in the end. Each ticket settles once (RuntimeError after)."""
        if not isinstance(ticket, Ticket):
            raise InvalidArgumentType(_ffi.TG_E_INVALID, f"ticket must be a Ticket, not {type(ticket).__name__}")
        if used is not None and ending not in (None, "usage"):
            raise InvalidArgument(_ffi.TG_E_INVALID, "give either used (the usage) or ending, not both")
        if used is None and ending is None:
            raise InvalidArgument(_ffi.TG_E_INVALID, "give used (the usage's total tokens) or ending")
        code: str = "usage" if used is not None or ending is None else ending
        return _settle(self, ticket, code, 0 if used is None else used, None if now is None else _ms(now))

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
        out.size = ctypes.sizeof(_ffi.TgStats)  # this layout's: the in-flight counters are written too
        ms = int(_ffi.tg_now_ms()) if now is None else _ms(now)
        st = _ffi.tg_limiter_stats(self._ptr(), ms, byref(out))
        if st:
            raise error_for(st, "tg_limiter_stats")
        f = None
        if out.has_in_flight:
            f = InFlightStats(
                out.in_flight, out.released_completed, out.released_aborted, out.reclaimed, out.refused_in_flight
            )
        return Stats(
            out.slots, out.used, out.table_full, out.region_bytes, out.layout_version, out.clock_faults, f
        )

    def lease_stats(self) -> LeaseStats | None:
        """The quota store's counters (mode, Redis up or down, latency,
        refills, fallbacks; tg_limiter_lease_stats), or None for a limiter
        not joined to one."""
        return read_lease_stats(self._ptr())

    def __repr__(self) -> str:
        where = f" path={self._path!r}" if self._path else ""
        joined = " joined" if self._joined and not self.closed else ""
        return f"<tollgate.Limiter{where}{joined}{' closed' if self.closed else ''}>"
