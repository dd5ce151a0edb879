"""Exceptions raised for the library's status codes."""

from __future__ import annotations

import re
from typing import Optional

from . import _ffi

__all__ = [
    "TollgateError",
    "InvalidArgument",
    "UnknownModel",
    "NoLimitConfigured",
    "CostTooLarge",
    "TableFull",
    "PolicyError",
    "RegionError",
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


class UnknownModel(TollgateError, LookupError):
    """The model is not in the policy (TG_E_UNKNOWN_MODEL): answer 404, not 429."""


class NoLimitConfigured(TollgateError, LookupError):
    """The policy has no limit for this tier and model, e.g. the Free tier of
    the built-in policy (TG_E_NO_LIMIT)."""


class CostTooLarge(TollgateError, ValueError):
    """The cost exceeds the limit itself, so it can never be admitted
    (TG_E_COST_TOO_LARGE)."""


class TableFull(TollgateError):
    """No slot is free for a new (account, model) key, or the region's model
    table is full (TG_E_TABLE_FULL, TG_E_MODEL_TABLE_FULL). The caller decides
    whether to fail open or closed."""


class PolicyError(TollgateError, ValueError):
    """The policy text or file is invalid or unreadable (TG_E_POLICY, or
    TG_E_IO while loading). ``file`` and ``line`` come from the library's
    ``file:line: field: reason`` message; either may be None."""

    file: Optional[str]
    line: Optional[int]

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.file, self.line = _where(message)


class RegionError(TollgateError, OSError):
    """The counter region cannot be used: the file cannot be opened or mapped,
    it is not a tollgate region, has another layout version or size, is
    corrupt or misaligned, or the CPU lacks 128-bit compare-and-swap."""

    def __init__(self, status: int, message: str) -> None:
        # OSError's own constructor would reinterpret the arguments.
        TollgateError.__init__(self, status, message)


_WHERE_LINE = re.compile(r"^(.*?):(\d+): ", re.S)
_WHERE_FILE = re.compile(r"^(.*?): ", re.S)


def _where(message: str) -> tuple[Optional[str], Optional[int]]:
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
}


def error_for(status: int, context: str = "", detail: str = "", io_class: Optional[type[TollgateError]] = None) -> TollgateError:
    """The exception for a non-zero status. ``detail`` is the library's own
    message when it wrote one (policy errors); otherwise the message is
    tg_status_str plus ``context``."""
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
    return cls(status, message)
