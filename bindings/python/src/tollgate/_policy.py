"""Policy: the models, and per-tier limits per model, a limiter decides by."""

from __future__ import annotations

import ctypes
import os
from ctypes import byref, c_size_t, c_uint32, c_void_p, create_string_buffer

from . import _ffi
from ._args import PathLike, StrOrBytes, _as_bytes, _fs_path
from ._handle import _Handle
from ._tier import TierLike, _tier_value
from .errors import PolicyError, error_for, shown

__all__ = ["Policy"]

_new = object.__new__


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
