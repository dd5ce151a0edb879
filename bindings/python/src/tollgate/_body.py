"""Finding the model in a request body: the library's scanner (tg_body_model),
so every binding reads a body the same way and refuses the same bodies."""

from __future__ import annotations

from ctypes import byref, c_size_t, create_string_buffer
from typing import Union

from . import _ffi
from .errors import InvalidArgumentType, error_for

__all__ = ["body_model"]

BodyLike = Union[bytes, bytearray, memoryview]


def body_model(body: BodyLike) -> bytes:
    """The model a JSON request body names, as UTF-8 bytes: the value of its
    one top-level key equal to ``model`` after JSON unescaping and ASCII case
    folding (at most BODY_MODEL_MAX = 64 bytes: longer values are cut, and
    are an unknown model for every policy).

    Raises BodyError when the body is refused; its ``status`` says why:
    TG_E_BODY_NOT_JSON (not one strict JSON object), TG_E_BODY_NO_MODEL (no
    such key, or not a string), TG_E_BODY_AMBIGUOUS_MODEL (two or more such
    keys), TG_E_BODY_TOO_DEEP (nested deeper than BODY_DEPTH_MAX levels).
    """
    if type(body) is not bytes:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise InvalidArgumentType(
                _ffi.TG_E_INVALID, f"body must be bytes, bytearray or memoryview, not {type(body).__name__}"
            )
        body = bytes(body)
    out = create_string_buffer(_ffi.BODY_MODEL_MAX)
    n = c_size_t(0)
    st = _ffi.tg_body_model(body, len(body), out, _ffi.BODY_MODEL_MAX, byref(n))
    if st:
        raise error_for(st, "tg_body_model")
    return out.raw[: n.value]
