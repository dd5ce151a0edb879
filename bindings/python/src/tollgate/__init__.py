"""Tollgate: per-(account, model) RPM/RPD rate limits for LLM inference APIs.

A thin ctypes layer over libtollgate.so; every decision is the shared
library's. Quick start::

    import tollgate
    limiter = tollgate.Limiter(tollgate.Policy.default())
    d = limiter.check("acct-1", "DeepSeek-V3.1")
    if not d.allowed:
        status, headers, body = 429, d.headers, d.error_body

A key with an in-flight limit (``max_in_flight``): the decision holds a unit
until the request ends::

    with limiter.check("acct-1", "DeepSeek-V3.1") as d:
        ...  # released on exit: "cut" if an exception escaped, else "complete"

One quota across hosts, through Redis::

    limiter = tollgate.Limiter.open("/dev/shm/tollgate", redis="redis://10.0.0.5:6379/0",
                                    redis_options={"hosts": 3})

Set ``TOLLGATE_LIBRARY`` to load another copy of the library.
"""

from ._answer import Answer
from ._args import now_ms
from ._body import body_model
from ._decision import Decision
from ._ffi import ACCOUNT_MAX, BODY_DEPTH_MAX, BODY_MODEL_MAX, LAYOUT_VERSION, MODEL_NAME_MAX, VERSION_NUMBER
from ._ffi import library_path as _library_path
from ._ffi import tg_version as _tg_version
from ._in_flight import InFlight, InFlightStats
from ._leases import LeaseStats
from ._limiter import DEFAULT_SLOTS, Limiter, Stats
from ._policy import Policy
from ._render import unknown_model_body
from ._tier import Tier
from ._tokens import Ticket, TokenWindows
from .errors import (
    BodyError,
    CostTooLarge,
    InvalidArgument,
    InvalidArgumentType,
    NoInFlight,
    NoLimitConfigured,
    NotJoined,
    NotLeased,
    PolicyError,
    RegionError,
    StoreError,
    TableFull,
    TokensTooLarge,
    TollgateError,
    UnknownModel,
)

__version__ = "0.1.0"

#: Path of the loaded shared library.
library_path: str = str(_library_path)


def library_version() -> str:
    """Version string of the loaded libtollgate (tg_version)."""
    raw = _tg_version()
    return raw.decode("ascii", "replace") if raw else ""


__all__ = [
    "ACCOUNT_MAX",
    "BODY_DEPTH_MAX",
    "BODY_MODEL_MAX",
    "DEFAULT_SLOTS",
    "LAYOUT_VERSION",
    "MODEL_NAME_MAX",
    "VERSION_NUMBER",
    "Answer",
    "BodyError",
    "CostTooLarge",
    "Decision",
    "InFlight",
    "InFlightStats",
    "InvalidArgument",
    "InvalidArgumentType",
    "LeaseStats",
    "Limiter",
    "NoInFlight",
    "NoLimitConfigured",
    "NotJoined",
    "NotLeased",
    "Policy",
    "PolicyError",
    "RegionError",
    "Stats",
    "StoreError",
    "TableFull",
    "Ticket",
    "Tier",
    "TokenWindows",
    "TokensTooLarge",
    "TollgateError",
    "UnknownModel",
    "body_model",
    "library_path",
    "library_version",
    "now_ms",
    "unknown_model_body",
]
