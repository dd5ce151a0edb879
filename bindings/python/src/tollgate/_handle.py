"""The base of the objects that own a library pointer (Policy, Limiter),
and the gate that keeps a handle's waiting calls apart from the calls that
need it alone."""

from __future__ import annotations

import sys
import threading
from ctypes import c_void_p
from typing import Any

from . import _ffi
from .errors import InvalidArgument


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
