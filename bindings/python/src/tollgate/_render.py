"""The library's renderers: JSON bodies written into a buffer, and header
pairs handed back one by one through a callback."""

from __future__ import annotations

from ctypes import byref, c_size_t, c_uint64, create_string_buffer
from typing import Any

from . import _ffi
from ._args import StrOrBytes, _as_bytes
from .errors import TollgateError, error_for

__all__ = ["answer_body", "answer_headers", "unknown_model_body"]


def unknown_model_body(model: StrOrBytes) -> bytes:
    """The library's OpenAI-shaped JSON body for a model the policy does not
    know, to send with a 404 (tg_unknown_model_body). It quotes ``model``
    whole: pass a bounded name (e.g. from :func:`tollgate.body_model`)."""
    mb = _as_bytes(model, "model")
    return _render(_ffi.tg_unknown_model_body, mb, len(mb))


def _render(fn: Any, dec: Any, *extra: Any) -> bytes:
    """Calls a tg_* renderer (buffer, cap, written last), growing the buffer
    once if needed."""
    cap = 512
    for _ in range(2):
        buf = create_string_buffer(cap)
        written = c_size_t(0)
        st = fn(dec, *extra, buf, cap, byref(written))
        if st == _ffi.TG_OK:
            return buf.raw[: written.value]
        if st != _ffi.TG_E_BUFFER_TOO_SMALL:
            raise error_for(st, fn.__name__)
        cap = written.value + 1
    raise TollgateError(_ffi.TG_E_BUFFER_TOO_SMALL, f"{fn.__name__}: buffer size keeps growing")


def _collect_header(out: list[tuple[bytes, bytes]], name: Any, name_len: int, value: Any, value_len: int) -> int:
    out.append((name[:name_len], value[:value_len]))
    return 0


# One tg_header_fn for every call: ``ctx`` is the list a call collects into.
_COLLECT = _ffi.HEADER_FN(_collect_header)


def answer_headers(answer: _ffi.TgAnswer) -> list[tuple[bytes, bytes]]:
    """The headers of a tg_answer as (name, value) byte pairs, in the
    library's order, names in lower case (tg_answer_headers)."""
    out: list[tuple[bytes, bytes]] = []
    st = _ffi.tg_answer_headers(byref(answer), _COLLECT, out)
    if st:
        raise error_for(st, "tg_answer_headers")
    return out


def answer_body(answer: _ffi.TgAnswer) -> bytes:
    """The JSON body of a tg_answer (tg_answer_body); b"" when it passes."""
    if not answer.http_status:
        return b""
    buf = create_string_buffer(_ffi.TG_ANSWER_BODY_MAX)
    n = c_size_t(0)
    st = _ffi.tg_answer_body(byref(answer), buf, _ffi.TG_ANSWER_BODY_MAX, byref(n))
    if st:
        raise error_for(st, "tg_answer_body")
    return buf.raw[: n.value]


def _decision_pairs(
    d: _ffi.TgDecision,
    now_ms: int | None = None,
    tokens: _ffi.TgTokens | None = None,
    in_flight: _ffi.TgInFlight | None = None,
) -> list[tuple[bytes, bytes]]:
    """The library's header pairs for a decision, in its order: the six,
    the six token headers with ``tokens``, the two in-flight headers with
    ``in_flight``, and retry-after (tg_decision_units_header_pairs), or with
    ``now_ms`` the IETF fields (tg_decision_units_ietf_header_pairs)."""
    out: list[tuple[bytes, bytes]] = []
    t = None if tokens is None else byref(tokens)
    f = None if in_flight is None else byref(in_flight)
    if now_ms is None:
        st = _ffi.tg_decision_units_header_pairs(byref(d), t, f, _COLLECT, out)
    else:
        st = _ffi.tg_decision_units_ietf_header_pairs(byref(d), t, f, c_uint64(now_ms), _COLLECT, out)
    if st:
        raise error_for(st, "tg_decision_units_header_pairs")
    return out
