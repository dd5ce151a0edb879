"""In-flight limits (docs/in-flight.md): a decision's requests running, the
admission it holds, and its release, exactly once. The count, the refusal,
the sweep of dead processes and every answer are the library's; this module
keeps the admission's 64-bit word and gives it back (tg_release)."""

from __future__ import annotations

import ctypes
import os
import struct
import weakref
from ctypes import byref, c_uint32
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from . import _ffi
from ._tokens import ENDINGS
from .errors import InvalidArgument, error_for

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["Ending", "InFlight", "InFlightStats"]

#: How a request ended, for :meth:`tollgate.Decision.release`: a name of
#: :data:`ENDINGS` ("complete", "failed", "cut", "usage") or a TG_END_* value.
Ending = Union[str, int]

_CODES = frozenset(ENDINGS.values())


@dataclass(frozen=True)
class InFlight:
    """A key's requests in flight as one decision saw them: its limit
    (``max_in_flight``), the requests running (this one included when
    admitted) and whether this decision holds a unit to release."""

    limit: int
    in_use: int
    admitted: bool


@dataclass(frozen=True)
class InFlightStats:
    """A table's requests in flight now, and its releases by cause since it
    was formatted, over every process on the table (tg_stats)."""

    #: Admitted and not yet released, over every key.
    in_use: int
    #: Released by requests that ran to their end (any ending but "cut").
    completed: int
    #: Released by requests cut short (client gone, an exception, a
    #: cancelled task, a Decision collected without a release).
    aborted: int
    #: Units given back from processes found dead.
    reclaimed: int
    #: Admissions refused for in-flight.
    refused: int


def ending_code(ending: Ending) -> int:
    """The TG_END_* value of ``ending``; InvalidArgument for anything else."""
    code = ENDINGS.get(ending) if isinstance(ending, str) else ending
    if isinstance(code, bool) or not isinstance(code, int) or code not in _CODES:
        raise InvalidArgument(_ffi.TG_E_INVALID, f"ending must be one of {sorted(ENDINGS)}, not {ending!r}")
    return code


def _release_dropped(limiter: Limiter, admission: int, pid: int) -> None:
    # The owner was collected (or the interpreter is exiting) without a
    # release: the request did not end as it should, so it counts as cut.
    # Never in a forked child, whose copy of the admission is its parent's
    # to release. A finalizer must not raise.
    if os.getpid() != pid:
        return
    h = limiter._h
    if h is None:  # closed: nothing to call (the units come back when this process ends)
        return
    try:
        _ffi.tg_release(h, admission, _ffi.TG_END_CUT, None)
    except Exception:  # noqa: BLE001, S110 - whatever is half torn down at exit
        pass


class Admission:
    """One unit a decision holds, released once: by :meth:`release`, or as
    cut when its owner is collected or the interpreter exits first
    (weakref.finalize, whose once-only call is the guard)."""

    __slots__ = ("_done",)

    def __init__(self, owner: object, limiter: Limiter, admission: int) -> None:
        self._done = weakref.finalize(owner, _release_dropped, limiter, admission, os.getpid())

    @property
    def released(self) -> bool:
        return not self._done.alive

    def release(self, ending: Ending) -> int | None:
        """tg_release with ``ending``: the key's requests still running, or
        None when released already (nothing is done then)."""
        code = ending_code(ending)
        f = self._done
        if not f.alive:
            return None
        limiter, admission = f.peek()[2][:2]  # type: ignore[index]
        h = limiter._h
        if h is None:
            raise InvalidArgument(_ffi.TG_E_NULL, "Limiter is closed: the admission cannot be released")
        # detach() hands the call over to one caller only (it pops the
        # finalizer's entry under the GIL), whichever thread wins.
        if f.detach() is None:
            return None
        in_use = c_uint32(0)
        st = _ffi.tg_release(h, admission, code, byref(in_use))
        if st:
            raise error_for(st, "tg_release")
        return int(in_use.value)


# tg_in_flight: size, has_in_flight, limit, in_use, admission.
IN_FLIGHT_STRUCT = struct.Struct("@IIIIQ")
assert IN_FLIGHT_STRUCT.size == ctypes.sizeof(_ffi.TgInFlight)


def attach(d: object, limiter: Limiter, has: int, limit: int, in_use: int, admission: int) -> None:
    """Gives Decision ``d`` the in-flight fields of a tg_in_flight, and the
    admission it holds, if any."""
    if not has:
        return
    d._in_flight = InFlight(int(limit), int(in_use), bool(admission))  # type: ignore[attr-defined]
    if admission:
        d._admission = Admission(d, limiter, int(admission))  # type: ignore[attr-defined]
