"""Loading libtollgate.so and declaring its C ABI for ctypes.

Everything here mirrors include/tollgate.h. The package holds no limiting
logic of its own: every decision is made by the shared library.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from ctypes import (
    POINTER,
    Structure,
    c_char_p,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

# What this package was written for (include/tollgate.h). A library whose
# major.minor differs, whose patch is older, or whose region layout differs
# is refused at import: struct layouts and semantics could differ silently.
VERSION_NUMBER = 3000  # 0.3.0 = major*1000000 + minor*1000 + patch
LAYOUT_VERSION = 3
ACCOUNT_MAX = 64
MODEL_NAME_MAX = 56
BODY_MODEL_MAX = 64
BODY_DEPTH_MAX = 1024
# tg_account_digest: an account id made from an API key, in hex digits.
TG_ACCOUNT_DIGEST_LEN = 32

TG_OK = 0
TG_E_NULL = 1
TG_E_INVALID = 2
TG_E_ACCOUNT = 3
TG_E_UNKNOWN_MODEL = 4
TG_E_NO_LIMIT = 5
TG_E_COST_TOO_LARGE = 6
TG_E_TABLE_FULL = 7
TG_E_BUFFER_TOO_SMALL = 8
TG_E_POLICY = 9
TG_E_IO = 10
TG_E_REGION_MAGIC = 11
TG_E_REGION_VERSION = 12
TG_E_REGION_SIZE = 13
TG_E_REGION_CORRUPT = 14
TG_E_ALIGNMENT = 15
TG_E_UNSUPPORTED = 16
TG_E_MODEL_TABLE_FULL = 17
TG_E_NO_SPACE = 18
TG_E_READ_ONLY = 19
TG_E_BODY_NOT_JSON = 20
TG_E_BODY_NO_MODEL = 21
TG_E_BODY_AMBIGUOUS_MODEL = 22
TG_E_BODY_TOO_DEEP = 23
# What tg_answer_for is told when a request has no account id (also
# tg_bearer_key's word for a header without a bearer key), or a method that
# is not limited.
TG_E_NO_ACCOUNT = 30
TG_E_NOT_LIMITED = 31
TG_E_ABORTED = 32
TG_E_BODY_TOO_LARGE = 24
# One quota across hosts (tg_limiter_connect).
TG_E_NOT_JOINED = 33
TG_E_NOT_LEASED = 34
TG_E_STORE = 35
# Not an error: a no-wait call needs a round trip to the quota store; nothing
# was charged, and the same call without the flag, on a thread that may
# block, decides it.
TG_PENDING = 36
# Tokens (docs/tokens.md).
TG_E_TOKENS_TOO_LARGE = 37
TG_E_NO_TOKEN_WINDOWS = 38
TG_E_USAGE = 39
# In flight (docs/in-flight.md): the key has an in-flight limit and the
# call hands out no admission to release (tg_check, tg_check_tokens), or
# the table cannot hold one.
TG_E_NO_IN_FLIGHT = 40
TG_E_PANIC = 99

TG_TIER_FREE = 0
TG_TIER_DEVELOPER = 1
TG_TIER_ENTERPRISE = 2

TG_LIMIT_NONE = 0
TG_LIMIT_MINUTE = 1
TG_LIMIT_DAY = 2
TG_LIMIT_TOKENS_MINUTE = 3
TG_LIMIT_TOKENS_DAY = 4
TG_LIMIT_IN_FLIGHT = 5

# How a response ended, for tg_settle.
TG_END_USAGE = 0
TG_END_COMPLETE = 1
TG_END_FAILED = 2
TG_END_CUT = 3

TG_OPEN_CREATE = 1
TG_OPEN_LEASES = 4

TG_REQUEST_NO_WAIT = 1

TG_REDIS_LEASES = 0
TG_REDIS_EXACT = 1
TG_DOWN_LOCAL = 0
TG_DOWN_OPEN = 1
TG_DOWN_CLOSED = 2
TG_BREAKER_CLOSED = 0
TG_BREAKER_OPEN = 1
TG_BREAKER_HALF_OPEN = 2
# tg_limiter_lease_event levels.
TG_LOG_ERROR = 1
TG_LOG_WARN = 2
TG_LOG_INFO = 3

TG_ANSWER_DRY_RUN = 1
TG_ANSWER_NO_LIMIT_PASS = 2
TG_ANSWER_TABLE_FULL_OPEN = 4
TG_ANSWER_NO_ACCOUNT_PASS = 8
TG_ANSWER_NO_WAIT = 16
TG_ANSWER_BODY_MAX = 1024
TG_ANSWER_MODEL_MAX = 64
TG_OUTCOME_PASSED = 0

LIBRARY_ENV = "TOLLGATE_LIBRARY"
LIBRARY_NAME = "libtollgate.so"


# Every struct starts with its size; 0 (what ctypes and the packers below
# write) means the first sized layout, the one written here.
class TgRequest(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("account", c_char_p),
        ("account_len", c_size_t),
        ("model", c_char_p),
        ("model_len", c_size_t),
        ("tier", c_uint32),
        ("cost", c_uint32),
        ("rpm", c_uint32),
        ("rpd", c_uint32),
        ("model_handle", c_uint32),
        ("flags", c_uint32),
    ]


class TgDecision(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("allowed", c_uint32),
        ("limited_by", c_uint32),
        ("minute_limit", c_uint32),
        ("minute_remaining", c_uint32),
        ("minute_reset", c_uint64),
        ("day_limit", c_uint32),
        ("day_remaining", c_uint32),
        ("day_reset", c_uint64),
        ("retry_after", c_uint32),
    ]


class TgRequestTokens(Structure):
    """tg_request with the token fields (0.4): for token checks only; the
    hot path packs the 0.3 layout (REQUEST_STRUCT)."""

    _fields_ = [*TgRequest._fields_, ("tokens", c_uint32), ("tpm", c_uint32), ("tpd", c_uint32), ("_pad", c_uint32)]


class TgTicket(Structure):
    _fields_ = [("words", c_uint64 * 2)]


class TgTokens(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("has_tokens", c_uint32),
        ("minute_limit", c_uint32),
        ("minute_remaining", c_uint32),
        ("minute_reset", c_uint64),
        ("day_limit", c_uint32),
        ("day_remaining", c_uint32),
        ("day_reset", c_uint64),
        ("reserved", c_uint32),
        ("_pad", c_uint32),
        ("ticket", TgTicket),
    ]


class TgUsage(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("ending", c_uint32),
        ("input", c_uint64),
        ("output", c_uint64),
        ("total", c_uint64),
    ]


class TgStats(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("slots", c_uint32),
        ("used", c_uint32),
        ("table_full", c_uint64),
        ("region_bytes", c_uint64),
        ("layout_version", c_uint32),
        ("clock_faults", c_uint64),
        # Since 0.4, written when `size` covers them: the table's requests
        # in flight and their releases by cause.
        ("has_in_flight", c_uint32),
        ("in_flight", c_uint64),
        ("released_completed", c_uint64),
        ("released_aborted", c_uint64),
        ("reclaimed", c_uint64),
        ("refused_in_flight", c_uint64),
    ]


class TgLimiterOptions(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("flags", c_uint32),
        ("slots", c_uint32),
        ("mem", c_void_p),
        ("len", c_size_t),
        ("path", c_char_p),
    ]


TG_OPEN_LEASES = 4


class TgRedisOptions(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("mode", c_uint32),
        ("down", c_uint32),
        ("hosts", c_uint32),
        ("deadline_ms", c_uint32),
        ("refill_interval_ms", c_uint32),
        ("idle_after_ms", c_uint32),
        ("max_lease", c_uint32),
        ("max_connections", c_uint32),
        ("trip_after", c_uint32),
        ("cooldown_ms", c_uint32),
        ("max_cooldown_ms", c_uint32),
        ("max_hosts", c_uint32),
    ]


# Its counters after the six 32-bit fields, in the header's order.
LEASE_COUNTERS = (
    "decisions",
    "from_leases",
    "refills",
    "top_ups",
    "granted_units",
    "refused_by_store",
    "degraded",
    "degraded_admitted",
    "give_backs",
    "given_back_units",
    "pushes",
    "pushed_units",
    "dropped_units",
    "pending",
    "deferred",
    "last_latency_us",
    "store_calls",
    "store_failures",
    "store_timeouts",
    "store_circuit_open",
    "store_trips",
    "store_connects",
)


class TgLeaseStats(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("mode", c_uint32),
        ("down_policy", c_uint32),
        ("redis_down", c_uint32),
        ("breaker", c_uint32),
        ("connections", c_uint32),
    ] + [(name, c_uint64) for name in LEASE_COUNTERS] + [
        ("hosts", c_uint32),
        ("eviction_risk", c_uint32),
        ("refused_locally", c_uint64),
        ("evicted_keys", c_uint64),
        ("token_grants", c_uint64),
        ("token_refusals", c_uint64),
        ("token_settles", c_uint64),
    ]


class TgInFlight(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("has_in_flight", c_uint32),
        ("limit", c_uint32),
        ("in_use", c_uint32),
        ("admission", c_uint64),
    ]


class TgAnswer(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("http_status", c_uint32),
        ("would_status", c_uint32),
        ("outcome", c_uint32),
        ("has_decision", c_uint32),
        ("decision", TgDecision),
        ("body_kind", c_uint32),
        ("model_len", c_uint32),
        ("model", ctypes.c_char * TG_ANSWER_MODEL_MAX),  # uint8_t[]; c_char slices to bytes
        ("tokens", TgTokens),  # since 0.4: written when `size` covers it
        ("in_flight", TgInFlight),  # since 0.4
    ]


class TgHttpRequest(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("cost", c_uint32),
        ("method", c_char_p),
        ("method_len", c_size_t),
        ("account", c_char_p),
        ("account_len", c_size_t),
        ("tier", c_char_p),
        ("tier_len", c_size_t),
        ("body", c_char_p),
        ("body_len", c_size_t),
    ]


# tg_header_fn: (ctx, name, name_len, value, value_len) -> 0 to go on. The
# ctx is a Python object (the list a call collects into), so concurrent
# calls from several threads never share one. Name and value arrive as
# char pointers, which slice to bytes in C (name[:name_len]): half the cost
# of a string_at call for each.
HEADER_FN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.py_object, POINTER(ctypes.c_char), c_size_t, POINTER(ctypes.c_char), c_size_t
)


# The hot path packs a request once per key and unpacks each decision with
# one `struct` call, instead of touching ctypes fields one by one (several
# times cheaper per call). Native alignment ("@") matches the C layout; the
# checks below make sure of it against the ctypes Structures.
REQUEST_STRUCT = struct.Struct("@IPNPNIIIIII")
DECISION_STRUCT = struct.Struct("@IIIIIQIIQI")
assert REQUEST_STRUCT.size == ctypes.sizeof(TgRequest) == 64
# Where `flags` is, last: a request is made blocking by rewriting it.
REQUEST_FLAGS_OFFSET = TgRequest.flags.offset
assert REQUEST_FLAGS_OFFSET == REQUEST_STRUCT.size - 4
assert DECISION_STRUCT.size <= ctypes.sizeof(TgDecision)
assert [TgDecision.minute_reset.offset, TgDecision.day_reset.offset, TgDecision.retry_after.offset] == [
    struct.calcsize("@IIIIIQ") - 8,
    struct.calcsize("@IIIIIQIIQ") - 8,
    struct.calcsize("@IIIIIQIIQ"),
]
# What check() reads of a decision: every field but `size`, `allowed` (0 or
# 1) read as a bool from its low byte, so the values come out as Decision
# holds them.
DECISION_OUT = struct.Struct("@4x?3xIIIQIIQI" if sys.byteorder == "little" else "@7x?IIIQIIQI")
assert DECISION_OUT.size == DECISION_STRUCT.size
assert DECISION_OUT.unpack(DECISION_STRUCT.pack(9, 1, 2, 3, 4, 5, 6, 7, 8, 9)) == (True, 2, 3, 4, 5, 6, 7, 8, 9)


def version_string(n: int) -> str:
    return f"{n // 1000000}.{n // 1000 % 1000}.{n % 1000}"


def _library_path() -> Path:
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / LIBRARY_NAME


def _load() -> tuple[ctypes.CDLL, Path]:
    path = _library_path()
    source = f"${LIBRARY_ENV}" if os.environ.get(LIBRARY_ENV) else "the package"
    if not path.exists():
        raise ImportError(
            f"tollgate: shared library not found at {path} (from {source}); "
            f"build it with `cargo build --release` and reinstall the package, "
            f"or set {LIBRARY_ENV} to the path of {LIBRARY_NAME}"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise ImportError(f"tollgate: cannot load {path} (from {source}) as a shared library: {e}") from None
    try:
        ver = lib.tg_version_number
        lay = lib.tg_layout_version
    except AttributeError:
        raise ImportError(
            f"tollgate: {path} (from {source}) is not libtollgate: it exports no tg_version_number/tg_layout_version"
        ) from None
    ver.argtypes = []
    ver.restype = c_uint32
    lay.argtypes = []
    lay.restype = c_uint32
    found, layout = int(ver()), int(lay())
    want = VERSION_NUMBER
    if found // 1000 != want // 1000 or found < want or layout != LAYOUT_VERSION:
        raise ImportError(
            f"tollgate: {path} (from {source}) is libtollgate {version_string(found)} with region layout "
            f"{layout}, but this package was written for {version_string(want // 1000 * 1000)}.x "
            f"(at least {version_string(want)}) with layout {LAYOUT_VERSION}; rebuild the library or the package"
        )
    return lib, path


lib, library_path = _load()

_i32 = c_int32
_PP = POINTER(c_void_p)


# Calls on a limiter handle keep the GIL (PyDLL): tg_limiter_set_policy must
# not overlap any other call on the same handle, and with every such call
# holding the GIL, none can overlap within this process. They are all short
# (tg_check is ~100 ns of lock-free C, cheaper than dropping and retaking the
# GIL; tg_limiter_stats walks the table once). Everything else (opening
# files, parsing policies, rendering) goes through CDLL and releases the GIL.
_pylib = ctypes.PyDLL(str(library_path))


def _proto(
    name: str, restype: object, argtypes: list[object], hold_gil: bool = False
) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    try:
        fn = getattr(_pylib if hold_gil else lib, name)
    except AttributeError:
        raise ImportError(f"tollgate: {library_path} lacks {name}; rebuild the library") from None
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


tg_version_number = lib.tg_version_number
tg_layout_version = lib.tg_layout_version
tg_version = _proto("tg_version", c_char_p, [])
tg_status_str = _proto("tg_status_str", c_char_p, [c_int32])
tg_policy_default = _proto("tg_policy_default", _i32, [_PP])
tg_policy_load = _proto("tg_policy_load", _i32, [c_char_p, _PP, c_char_p, c_size_t])
tg_policy_parse = _proto("tg_policy_parse", _i32, [c_char_p, c_size_t, _PP, c_char_p, c_size_t])
tg_policy_free = _proto("tg_policy_free", None, [c_void_p])
tg_policy_limits = _proto(
    "tg_policy_limits",
    _i32,
    [c_void_p, c_uint32, c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_uint32), POINTER(c_uint32)],
)
tg_policy_model_count = _proto("tg_policy_model_count", _i32, [c_void_p, POINTER(c_uint32)])
tg_policy_model_name = _proto(
    "tg_policy_model_name", _i32, [c_void_p, c_uint32, POINTER(c_void_p), POINTER(c_size_t)]
)
tg_region_size = _proto("tg_region_size", c_size_t, [c_uint32])
# The message of this thread's last failed limiter constructor (path, OS
# reason, sizes, what to do). Thread-local in the library, and ctypes calls
# run on the calling thread, so it is read right after the failed call.
tg_last_error = _proto("tg_last_error", c_char_p, [])
tg_limiter_new = _proto("tg_limiter_new", _i32, [c_void_p, c_uint32, _PP])
tg_limiter_open = _proto("tg_limiter_open", _i32, [c_void_p, c_char_p, c_uint32, c_uint32, _PP])
tg_limiter_make = _proto("tg_limiter_make", _i32, [c_void_p, POINTER(TgLimiterOptions), _PP])
# One quota across hosts. The option parser and connect release the GIL:
# connect is called on a handle no other thread has yet, and may wait for
# Redis up to the deadline.
tg_redis_options_set = _proto(
    "tg_redis_options_set", _i32, [POINTER(TgRedisOptions), c_char_p, c_size_t, c_char_p, c_size_t]
)
tg_limiter_connect = _proto("tg_limiter_connect", _i32, [c_void_p, c_char_p, POINTER(TgRedisOptions)])
tg_limiter_lease_stats = _proto(
    "tg_limiter_lease_stats", _i32, [c_void_p, POINTER(TgLeaseStats)], hold_gil=True
)
# Read by the thread that logs a joined limiter's events (_leases._LeaseEvents):
# a short copy under the library's lock, keeping the GIL like the calls above.
tg_limiter_lease_event = _proto(
    "tg_limiter_lease_event",
    _i32,
    [c_void_p, POINTER(c_uint64), POINTER(c_uint32), c_char_p, c_size_t],
    hold_gil=True,
)
tg_limiter_set_policy = _proto("tg_limiter_set_policy", _i32, [c_void_p, c_void_p], hold_gil=True)
tg_limiter_share = _proto("tg_limiter_share", _i32, [c_void_p, c_void_p, _PP], hold_gil=True)
tg_limiter_stats = _proto("tg_limiter_stats", _i32, [c_void_p, c_uint64, POINTER(TgStats)], hold_gil=True)
tg_limiter_free = _proto("tg_limiter_free", None, [c_void_p], hold_gil=True)
tg_check = _proto("tg_check", _i32, [c_void_p, POINTER(TgRequest), c_uint64, POINTER(TgDecision)], hold_gil=True)
tg_check_now = _proto("tg_check_now", _i32, [c_void_p, POINTER(TgRequest), POINTER(TgDecision)], hold_gil=True)
tg_now_ms = _proto("tg_now_ms", c_uint64, [])
tg_decision_headers = _proto(
    "tg_decision_headers", _i32, [POINTER(TgDecision), c_char_p, c_size_t, POINTER(c_size_t)]
)
tg_decision_ietf_headers = _proto(
    "tg_decision_ietf_headers", _i32, [POINTER(TgDecision), c_uint64, c_char_p, c_size_t, POINTER(c_size_t)]
)
tg_decision_error_body = _proto(
    "tg_decision_error_body",
    _i32,
    [POINTER(TgDecision), c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)],
)
tg_unknown_model_body = _proto(
    "tg_unknown_model_body", _i32, [c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)]
)
# Scanning a body reads all of it (up to the server's body cap): without the
# GIL, other threads run meanwhile.
tg_body_model = _proto(
    "tg_body_model", _i32, [c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)]
)

# The whole HTTP answer (src/ffi/answer.rs): decided on a limiter handle,
# so it keeps the GIL like tg_check. So does tg_answer_headers, whose
# callback then re-enters Python without waiting for the GIL.
tg_answer_request = _proto(
    "tg_answer_request",
    _i32,
    [c_void_p, POINTER(TgHttpRequest), c_uint64, c_uint32, c_uint32, POINTER(TgAnswer)],
    hold_gil=True,
)
tg_answer_for = _proto(
    "tg_answer_for",
    _i32,
    [c_int32, POINTER(TgDecision), c_char_p, c_size_t, c_uint32, c_uint32, POINTER(TgAnswer)],
    hold_gil=True,
)
tg_answer_headers = _proto(
    "tg_answer_headers", _i32, [POINTER(TgAnswer), HEADER_FN, ctypes.py_object], hold_gil=True
)
tg_decision_header_pairs = _proto(
    "tg_decision_header_pairs", _i32, [POINTER(TgDecision), HEADER_FN, ctypes.py_object], hold_gil=True
)
tg_decision_ietf_header_pairs = _proto(
    "tg_decision_ietf_header_pairs",
    _i32,
    [POINTER(TgDecision), c_uint64, HEADER_FN, ctypes.py_object],
    hold_gil=True,
)
tg_answer_body = _proto(
    "tg_answer_body", _i32, [POINTER(TgAnswer), c_char_p, c_size_t, POINTER(c_size_t)], hold_gil=True
)
# Tokens: a check that gives the reservation's ticket, settling it, and a
# response's usage read by the library (src/ffi/tokens.rs).
tg_check_tokens = _proto(
    "tg_check_tokens",
    _i32,
    [c_void_p, POINTER(TgRequestTokens), c_uint64, POINTER(TgDecision), POINTER(TgTokens)],
    hold_gil=True,
)
tg_settle = _proto(
    "tg_settle", _i32, [c_void_p, POINTER(TgTicket), c_uint32, c_uint64, c_uint64, POINTER(c_uint64)], hold_gil=True
)
tg_tokens_header_pairs = _proto(
    "tg_tokens_header_pairs", _i32, [POINTER(TgTokens), HEADER_FN, ctypes.py_object], hold_gil=True
)
tg_decision_tokens_header_pairs = _proto(
    "tg_decision_tokens_header_pairs",
    _i32,
    [POINTER(TgDecision), POINTER(TgTokens), HEADER_FN, ctypes.py_object],
    hold_gil=True,
)
tg_decision_tokens_ietf_header_pairs = _proto(
    "tg_decision_tokens_ietf_header_pairs",
    _i32,
    [POINTER(TgDecision), POINTER(TgTokens), c_uint64, HEADER_FN, ctypes.py_object],
    hold_gil=True,
)
tg_decision_units_header_pairs = _proto(
    "tg_decision_units_header_pairs",
    _i32,
    [POINTER(TgDecision), POINTER(TgTokens), POINTER(TgInFlight), HEADER_FN, ctypes.py_object],
    hold_gil=True,
)
tg_decision_units_ietf_header_pairs = _proto(
    "tg_decision_units_ietf_header_pairs",
    _i32,
    [POINTER(TgDecision), POINTER(TgTokens), POINTER(TgInFlight), c_uint64, HEADER_FN, ctypes.py_object],
    hold_gil=True,
)
tg_decision_units_error_body = _proto(
    "tg_decision_units_error_body",
    _i32,
    [
        POINTER(TgDecision),
        POINTER(TgTokens),
        POINTER(TgInFlight),
        c_char_p,
        c_size_t,
        c_char_p,
        c_size_t,
        POINTER(c_size_t),
    ],
)
# In flight: a check that hands out the admission, its answer, and its
# release (src/ffi/in_flight.rs). On a limiter handle: they keep the GIL.
tg_check_units = _proto(
    "tg_check_units",
    _i32,
    [c_void_p, POINTER(TgRequestTokens), c_uint64, POINTER(TgDecision), POINTER(TgTokens), POINTER(TgInFlight)],
    hold_gil=True,
)
tg_answer_for_units = _proto(
    "tg_answer_for_units",
    _i32,
    [
        c_int32,
        POINTER(TgDecision),
        POINTER(TgTokens),
        POINTER(TgInFlight),
        c_char_p,
        c_size_t,
        c_uint32,
        c_uint32,
        POINTER(TgAnswer),
    ],
    hold_gil=True,
)
tg_release = _proto("tg_release", _i32, [c_void_p, c_uint64, c_uint32, POINTER(c_uint32)], hold_gil=True)
tg_usage_scan_size = _proto("tg_usage_scan_size", c_size_t, [], hold_gil=True)
tg_usage_scan_init = _proto(
    "tg_usage_scan_init", _i32, [c_void_p, c_size_t, c_char_p, c_size_t, POINTER(c_void_p)], hold_gil=True
)
tg_usage_scan_feed = _proto("tg_usage_scan_feed", _i32, [c_void_p, c_char_p, c_size_t], hold_gil=True)
tg_usage_scan_finish = _proto(
    "tg_usage_scan_finish", _i32, [c_void_p, c_uint32, c_uint32, POINTER(TgUsage)], hold_gil=True
)
tg_usage_ending = _proto("tg_usage_ending", c_uint32, [c_uint32, c_uint32], hold_gil=True)
tg_outcome_name = _proto("tg_outcome_name", c_char_p, [c_uint32], hold_gil=True)
tg_tier_parse = _proto("tg_tier_parse", _i32, [c_char_p, c_size_t, POINTER(c_uint32)], hold_gil=True)
tg_method_limited = _proto("tg_method_limited", c_uint32, [c_char_p, c_size_t], hold_gil=True)
# Account ids from bearer keys, read and digested by the library (a few
# hundred nanoseconds: cheaper than dropping the GIL).
tg_bearer_key = _proto(
    "tg_bearer_key", _i32, [c_char_p, c_size_t, POINTER(c_size_t), POINTER(c_size_t)], hold_gil=True
)
tg_bearer_digest = _proto(
    "tg_bearer_digest", _i32, [c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)], hold_gil=True
)
tg_account_digest = _proto(
    "tg_account_digest", _i32, [c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)], hold_gil=True
)

# Hot-path twins of tg_check and tg_check_now without argtypes: ctypes then
# converts nothing. They are only ever called with byref() objects (the
# handle, see _limiter's "the hot path", and the decision), a bytes object
# holding a packed tg_request, and for tg_check a c_uint64; the default
# restype (C int) reads the int32 status. Like the others on a limiter
# handle, they keep the GIL.
fast_check = _pylib["tg_check"]
fast_check_now = _pylib["tg_check_now"]
# The same for tg_answer_request (the middleware's per-request call): a
# byref() of the handle and of the tg_http_request and tg_answer, a c_uint64
# and two c_uint32.
fast_answer_request = _pylib["tg_answer_request"]

# The same three through CDLL, which releases the GIL: the calls that may
# wait for the quota store (a request without the no-wait flag, after the
# no-wait one said TG_PENDING), so other threads and the event loop run
# meanwhile. Arguments as for their fast twins.
wait_check = lib["tg_check"]
wait_check_now = lib["tg_check_now"]
wait_answer_request = lib["tg_answer_request"]
