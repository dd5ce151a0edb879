"""Exceptions raised for the library's status codes."""

from __future__ import annotations

import errno as _errno
import os
import re

from . import _ffi

__all__ = [
    "BodyError",
    "CostTooLarge",
    "InvalidArgument",
    "InvalidArgumentType",
    "NoLimitConfigured",
    "NotJoined",
    "NotLeased",
    "PolicyError",
    "RegionError",
    "StoreError",
    "TableFull",
    "TollgateError",
    "UnknownModel",
]


class TollgateError(Exception):
    """Base of every error from the library; ``status`` is the tg_status code."""

    status: int

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def status_name(self) -> str:
        """The library's short description of ``status`` (tg_status_str)."""
        raw = _ffi.tg_status_str(self.status)
        return raw.decode("utf-8", "replace") if raw else "unknown status"


class InvalidArgument(TollgateError, ValueError):
    """An argument is out of range: tier, lengths, slot count, clock, or an
    account id that is empty or longer than 64 bytes (TG_E_NULL, TG_E_INVALID,
    TG_E_ACCOUNT)."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument of the wrong type (e.g. a bool where a number or tier is
    taken): an InvalidArgument that is also a TypeError."""


class BodyError(TollgateError, ValueError):
    """A request body the library refuses to take a model from
    (TG_E_BODY_*, see :func:`tollgate.body_model`): not a JSON object
    (``TG_E_BODY_NOT_JSON``), no string ``"model"`` (``TG_E_BODY_NO_MODEL``),
    more than one key naming the model (``TG_E_BODY_AMBIGUOUS_MODEL``), or
    nested too deep (``TG_E_BODY_TOO_DEEP``); ``status`` says which."""


class UnknownModel(TollgateError, LookupError):
    """The model is not in the policy (TG_E_UNKNOWN_MODEL): answer 404, not 429."""


class NoLimitConfigured(TollgateError, LookupError):
    """The policy has no limit for this tier and model, e.g. the Free tier of
    the built-in policy (TG_E_NO_LIMIT)."""


class CostTooLarge(TollgateError, ValueError):
    """The cost exceeds the limit itself, so it can never be admitted
    (TG_E_COST_TOO_LARGE)."""


class TokensTooLarge(TollgateError, ValueError):
    """The request's token reservation (its prompt estimate plus its output
    cap) exceeds the key's token limit itself, so it can never be admitted
    (TG_E_TOKENS_TOO_LARGE): ask for fewer output tokens or send less."""


class TableFull(TollgateError):
    """No slot is free for a new (account, model) key, or the region's model
    table is full (TG_E_TABLE_FULL, TG_E_MODEL_TABLE_FULL). The caller decides
    whether to fail open or closed."""


class NotJoined(TollgateError):
    """The table holds quota leases (it was made for one quota across
    hosts) and this limiter is not joined to the store: open it with
    ``redis=...`` (TG_E_NOT_JOINED)."""


class NotLeased(TollgateError, ValueError):
    """``redis=...`` was given for a table file made for local limits only;
    a table for one quota across hosts is made so from the start: use
    another file (TG_E_NOT_LEASED)."""


class StoreError(TollgateError):
    """The quota store's URL or options are unusable, or Redis answered with
    an error (TG_E_STORE). Redis down or slow is not an error: decisions
    follow the down policy, and :meth:`Limiter.lease_stats` says so."""


class NoInFlight(TollgateError):
    """The key has an in-flight limit the table cannot hold (TG_E_NO_IN_FLIGHT):
    a table formatted before the in-flight areas (carry it over with
    ``tollgate resize``), or every ledger entry or holder entry in use."""


class PolicyError(TollgateError, ValueError):
    """The policy text or file is invalid or unreadable (TG_E_POLICY, or
    TG_E_IO while loading). ``file`` and ``line`` come from the library's
    ``file:line: field: reason`` message; either may be None."""

    file: str | None
    line: int | None

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.file, self.line = _where(message)


class RegionError(TollgateError, OSError):
    """The counter region cannot be used: the file cannot be opened or mapped,
    it is not a tollgate region, has another layout version or size, is
    corrupt or misaligned, or the CPU lacks 128-bit compare-and-swap.

    The message is the library's (tg_last_error): the path, the operating
    system's reason, sizes, and what to do. When the operating system gave a
    reason, ``errno`` and ``strerror`` carry it (as for any OSError; the
    code the library reported, ENOSPC for a full disk); ``filename`` is the
    file's path when one was involved."""

    def __init__(self, status: int, message: str, errno: int | None = None, filename: str | None = None) -> None:
        # OSError's own constructor would reinterpret the arguments.
        TollgateError.__init__(self, status, message)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None
        self.filename = filename

    def __str__(self) -> str:
        # OSError's __str__ would show only errno, strerror and filename.
        return str(self.args[0]) if self.args else ""


_WHERE_LINE = re.compile(r"^(.*?):(\d+): ", re.DOTALL)
_WHERE_FILE = re.compile(r"^(.*?): ", re.DOTALL)


def _where(message: str) -> tuple[str | None, int | None]:
    m = _WHERE_LINE.match(message)
    if m:
        return m.group(1), int(m.group(2))
    m = _WHERE_FILE.match(message)
    if m:
        return m.group(1), None
    return None, None


_BY_STATUS: dict[int, type[TollgateError]] = {
    _ffi.TG_E_NULL: InvalidArgument,
    _ffi.TG_E_INVALID: InvalidArgument,
    _ffi.TG_E_ACCOUNT: InvalidArgument,
    _ffi.TG_E_UNKNOWN_MODEL: UnknownModel,
    _ffi.TG_E_NO_LIMIT: NoLimitConfigured,
    _ffi.TG_E_COST_TOO_LARGE: CostTooLarge,
    _ffi.TG_E_TOKENS_TOO_LARGE: TokensTooLarge,
    _ffi.TG_E_TABLE_FULL: TableFull,
    _ffi.TG_E_MODEL_TABLE_FULL: TableFull,
    _ffi.TG_E_POLICY: PolicyError,
    _ffi.TG_E_IO: RegionError,
    _ffi.TG_E_REGION_MAGIC: RegionError,
    _ffi.TG_E_REGION_VERSION: RegionError,
    _ffi.TG_E_REGION_SIZE: RegionError,
    _ffi.TG_E_REGION_CORRUPT: RegionError,
    _ffi.TG_E_ALIGNMENT: RegionError,
    _ffi.TG_E_UNSUPPORTED: RegionError,
    _ffi.TG_E_NO_SPACE: RegionError,
    _ffi.TG_E_BODY_NOT_JSON: BodyError,
    _ffi.TG_E_BODY_NO_MODEL: BodyError,
    _ffi.TG_E_BODY_AMBIGUOUS_MODEL: BodyError,
    _ffi.TG_E_BODY_TOO_DEEP: BodyError,
    _ffi.TG_E_NOT_JOINED: NotJoined,
    _ffi.TG_E_NOT_LEASED: NotLeased,
    _ffi.TG_E_STORE: StoreError,
    _ffi.TG_E_NO_IN_FLIGHT: NoInFlight,
}

#: How much of a caller's value (an account id, a model name) an error
#: message shows: enough to recognise it, never a client's whole input.
SHOWN_BYTES = 64


def shown(value: bytes) -> str:
    """``value`` for an error message: its repr, cut after SHOWN_BYTES bytes
    with the full length noted."""
    if len(value) <= SHOWN_BYTES:
        return repr(value.decode("utf-8", "replace"))
    head = value[:SHOWN_BYTES].decode("utf-8", "ignore")
    return f"{head!r}... ({len(value)} bytes)"


def error_for(
    status: int,
    context: str = "",
    detail: str = "",
    io_class: type[TollgateError] | None = None,
    filename: str | None = None,
) -> TollgateError:
    """The exception for a non-zero status. ``detail`` is the library's own
    message when it wrote one (policy errors, tg_last_error); otherwise the
    message is tg_status_str plus ``context``. ``filename`` is the file
    involved, for RegionError."""
    cls = _BY_STATUS.get(status, TollgateError)
    if status == _ffi.TG_E_IO and io_class is not None:
        cls = io_class
    if detail:
        message = detail
    else:
        raw = _ffi.tg_status_str(status)
        message = raw.decode("utf-8", "replace") if raw else f"status {status}"
        if context:
            message = f"{context}: {message}"
    if cls is RegionError:
        return RegionError(status, message, _os_code(status, detail), filename)
    return cls(status, message)


# How Rust's std shows an OS error in the library's messages
# ("No such file or directory (os error 2)"): the code the OS gave.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _os_code(status: int, detail: str) -> int | None:
    if status == _ffi.TG_E_NO_SPACE:
        return _errno.ENOSPC
    m = _OS_ERROR.search(detail) if status == _ffi.TG_E_IO else None
    return int(m.group(1)) if m else None


def constructor_error(
    status: int, context: str, io_class: type[TollgateError] | None = None, filename: str | None = None
) -> TollgateError:
    """The exception for a failed limiter constructor (tg_limiter_new,
    _open, _share, their _for_leases forms, tg_limiter_connect,
    tg_redis_options_set): the library's own account of it (tg_last_error: the
    path, the OS's reason, the sizes, what to do), read on the thread that
    made the call."""
    raw = _ffi.tg_last_error()
    detail = raw.decode("utf-8", "replace") if raw else ""
    if detail and filename and filename not in detail:
        # Some region faults are told without the path ("not a tollgate
        # region ..."): say which file.
        detail = f"{filename}: {detail}"
    return error_for(status, context, detail, io_class, filename)
