"""Arguments as the library takes them: text and paths encoded, numbers
and the clock checked, each refusal an InvalidArgument naming the
argument."""

from __future__ import annotations

import math
import os
from typing import Union

from . import _ffi
from .errors import InvalidArgument, InvalidArgumentType

__all__ = ["PathLike", "StrOrBytes", "now_ms"]

StrOrBytes = Union[str, bytes]
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


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
