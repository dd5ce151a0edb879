"""One quota across hosts: the quota store's URL and options (checked
before any table is made), the thread that logs a joined link's events,
and the store's counters (LeaseStats)."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping
from ctypes import byref, c_uint32, c_uint64, c_void_p, create_string_buffer
from dataclasses import dataclass
from typing import Union

from . import _ffi
from ._args import _encode
from .errors import InvalidArgument, InvalidArgumentType, constructor_error, error_for

__all__ = ["LeaseStats", "RedisOptionValue"]

#: A quota store option's value, handed to the library's parser as text:
#: ``{"hosts": 3, "deadline": "50ms", "down": "local", "mode": "exact"}``.
RedisOptionValue = Union[str, int]


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
    #: Token reservations Redis granted (each one exact grant).
    token_grants: int = 0
    #: Token reservations Redis refused: the key's token window was full.
    token_refusals: int = 0
    #: Settles that corrected Redis (a give-back or an excess).
    token_settles: int = 0


def read_lease_stats(h: c_void_p) -> LeaseStats | None:
    """The counters of the link ``h`` is joined to (Limiter.lease_stats), or
    None for a handle not joined to one."""
    out = _ffi.TgLeaseStats()
    out.size = ctypes.sizeof(out)
    st = _ffi.tg_limiter_lease_stats(h, byref(out))
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
        token_grants=int(out.token_grants),
        token_refusals=int(out.token_refusals),
        token_settles=int(out.token_settles),
    )
