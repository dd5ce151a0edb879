"""Account tiers: the Tier enum, and tier names as the library parses
them (tg_tier_parse)."""

from __future__ import annotations

import enum
from ctypes import byref, c_uint32
from typing import Any, Union

from . import _ffi
from .errors import InvalidArgument, InvalidArgumentType, shown

__all__ = ["Tier", "TierLike", "tier_parse"]

TierLike = Union[str, int]


class Tier(enum.IntEnum):
    """Account tiers (TG_TIER_*). Anywhere a tier is taken, its name
    ("free", "developer", "enterprise", any case, as the library parses it)
    or its number works too."""

    FREE = _ffi.TG_TIER_FREE
    DEVELOPER = _ffi.TG_TIER_DEVELOPER
    ENTERPRISE = _ffi.TG_TIER_ENTERPRISE


# Tier names are the library's to parse (tg_tier_parse, the one parser every
# binding uses); what it answered is remembered here, so the hot path (in
# _limiter) asks once per spelling. IntEnum members hash and compare like
# their ints, so one dict serves names, numbers and members. So would True
# and 1.0: the hot path looks a tier up only when its type is one of
# _TIER_TYPES.
_TIERS: dict[Any, int] = {int(t): int(t) for t in Tier}
_TIER_TYPES = frozenset({str, int, Tier})
_TIERS_CACHED = 64


def tier_parse(name: bytes) -> int | None:
    """TG_TIER_* for a tier name (tg_tier_parse), or None if it names none."""
    t = c_uint32()
    return int(t.value) if _ffi.tg_tier_parse(name, len(name), byref(t)) == _ffi.TG_OK else None


def _tier_value(tier: object) -> int:
    if isinstance(tier, str):
        name = tier.encode("utf-8", "replace")
        v = tier_parse(name)
        if v is not None:
            if type(tier) is str and len(_TIERS) < _TIERS_CACHED:
                _TIERS[tier] = v
            return v
        raise InvalidArgument(
            _ffi.TG_E_INVALID, f"unknown tier {shown(name)}: use free, developer or enterprise"
        )
    if isinstance(tier, int) and not isinstance(tier, bool):
        # Out-of-range numbers go to the library, which refuses them itself.
        if 0 <= tier <= 0xFFFFFFFF:
            return int(tier)
        raise InvalidArgument(_ffi.TG_E_INVALID, f"tier {tier} out of range")
    raise InvalidArgumentType(_ffi.TG_E_INVALID, f"tier must be a str or int, not {type(tier).__name__}")
