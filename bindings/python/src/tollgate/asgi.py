"""ASGI middleware: rate limits an OpenAI-compatible API with a Limiter.

Works with any ASGI app (Starlette, FastAPI, plain ASGI callables); neither
framework is needed. For each limited request it buffers the body, has the
library's scanner find its model (:func:`tollgate.body_model`: the core's
parse and refusals, shared by every binding), asks the Limiter, and
either answers itself (429, 404, 403, 401, 400) or calls the app with the
body replayed and the six ``x-ratelimit-*`` headers added to the response
start. Response bodies are never buffered, so streamed (SSE) responses keep
streaming.

Example::

    from fastapi import FastAPI
    import tollgate
    from tollgate.asgi import RateLimitMiddleware, bearer_token_digest

    app = FastAPI()
    app.add_middleware(
        RateLimitMiddleware,
        limiter=tollgate.Limiter.open("/run/tollgate/table", tollgate.Policy.default()),
        account=bearer_token_digest,
        tier=lambda scope: "developer",
    )
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Awaitable, Collection, Iterable, MutableMapping
from typing import Any, Callable, Union

from . import _ffi
from ._body import body_model
from ._core import Decision, Limiter, unknown_model_body
from .errors import BodyError, CostTooLarge, InvalidArgument, NoLimitConfigured, TableFull, UnknownModel

__all__ = ["DECISION_SCOPE_KEY", "RateLimitMiddleware", "bearer_token", "bearer_token_digest", "header"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Account = Union[str, bytes, None]
AccountFn = Callable[[Scope], Union[Account, Awaitable[Account]]]
TierValue = Union[str, int]
TierFn = Callable[[Scope], Union[TierValue, Awaitable[TierValue]]]
CostFn = Callable[[Scope, Any], Union[int, Awaitable[int]]]
PathsFn = Callable[[Scope], bool]

#: Key under which the Decision of an admitted request is put in the ASGI
#: scope, for the app to read (``request.scope["tollgate.decision"]``).
DECISION_SCOPE_KEY = "tollgate.decision"


def header(scope: Scope, name: str) -> str | None:
    """The first request header called ``name`` (case-insensitive), decoded
    as latin-1, or None."""
    want = name.lower().encode("latin-1")
    for k, v in scope.get("headers") or ():
        if k.lower() == want:
            return bytes(v).decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None. Keys
    longer than 64 bytes are refused by the limiter as accounts: use
    :func:`bearer_token_digest` for those."""
    auth = header(scope, "authorization")
    if auth is None:
        return None
    scheme, _, token = auth.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def bearer_token_digest(scope: Scope) -> str | None:
    """A 32-hex-digit BLAKE2b digest of the bearer key (fits the limiter's
    64-byte account ids whatever the key's length, and keeps raw keys out of
    the shared table file), or None without a bearer key."""
    token = bearer_token(scope)
    if token is None:
        return None
    return hashlib.blake2b(token.encode("latin-1"), digest_size=16).hexdigest()


def _error_json(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    # Compact, in the nginx module's key order: the same refusal reads the
    # same from either.
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}, separators=(",", ":")).encode()


# Refusals that quote nothing of the request. The wording is the nginx
# module's (and CONTRACT.md's) until the library renders every answer.
_NOT_JSON = _error_json(
    "We could not parse the JSON body of your request. The API expects a JSON object with a 'model' field.",
    "invalid_request_error",
    None,
    "invalid_json",
)
_TOO_DEEP = _error_json(
    f"The request body nests deeper than {_ffi.BODY_DEPTH_MAX} levels.", "invalid_request_error", None, "invalid_json"
)
_NO_MODEL = _error_json("you must provide a model parameter", "invalid_request_error", None, None)
_AMBIGUOUS_MODEL = _error_json(
    'The request body names the model more than once (keys equal to "model" ignoring case or escapes); '
    'send exactly one "model" key.',
    "invalid_request_error",
    "model",
    "ambiguous_model",
)
_NO_API_KEY = _error_json(
    "You didn't provide a usable API key. Provide your API key in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY).",
    "invalid_request_error",
    None,
    "invalid_api_key",
)
_BODY_REFUSALS = {
    _ffi.TG_E_BODY_NOT_JSON: _NOT_JSON,
    _ffi.TG_E_BODY_NO_MODEL: _NO_MODEL,
    _ffi.TG_E_BODY_AMBIGUOUS_MODEL: _AMBIGUOUS_MODEL,
    _ffi.TG_E_BODY_TOO_DEEP: _TOO_DEEP,
}


async def _maybe_await(v: Any) -> Any:
    if inspect.isawaitable(v):
        return await v
    return v


class RateLimitMiddleware:
    """Limits requests per (account, model) with a :class:`tollgate.Limiter`.

    Parameters:
      app: the ASGI app to wrap.
      limiter: the Limiter (use ``Limiter.open(path, ...)`` to share limits
        across worker processes).
      account: ``account(scope)`` gives the account id (str or bytes, at most
        64 bytes); may be async. None (or empty) means the request has no API
        key: see ``on_no_account``.
      tier: a tier ("free", "developer", "enterprise", or a Tier), or
        ``tier(scope)`` giving one; may be async.
      cost: requests this call counts for, or ``cost(scope, body)`` giving it
        from the parsed JSON body (a body Python's json cannot parse, e.g.
        nested past its recursion limit, is then a 400).
      paths: which paths are limited: None (all), a collection of exact paths
        (an entry ending in ``*`` is a prefix), or ``paths(scope) -> bool``.
      methods: HTTP methods limited (default POST only).
      on_no_account: "deny" (401, default, as the nginx module answers) or
        "allow" (the request passes, unlimited) when ``account`` gives None.
      on_table_full: "deny" (503, default) or "allow" when the table has no
        slot for a new key.
      on_no_limit: "deny" (403, default) or "allow" when the policy has no
        limit for the tier and model (e.g. the Free tier by default).
      max_body_bytes: largest body buffered to find the model (413 above);
        None for no cap beyond the server's.

    Answers, all OpenAI-shaped JSON errors: 429 with the six headers,
    ``retry-after`` and the library's body when over a limit; 404 for a model
    the policy does not know; 401 ``invalid_api_key`` without a usable
    account; 400 for a body the library's scanner refuses (not one JSON
    object, no string ``"model"``, the model named twice: code
    ``ambiguous_model``, nested too deep). Admitted requests get the six
    headers added to the response, and their Decision in
    ``scope["tollgate.decision"]``. Non-HTTP scopes (lifespan, websocket)
    pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: Limiter,
        *,
        account: AccountFn,
        tier: TierValue | TierFn = "developer",
        cost: int | CostFn = 1,
        paths: None | Collection[str] | PathsFn = None,
        methods: Iterable[str] = ("POST",),
        on_no_account: str = "deny",
        on_table_full: str = "deny",
        on_no_limit: str = "deny",
        max_body_bytes: int | None = None,
    ) -> None:
        if not callable(account):
            raise TypeError("account must be a callable taking the ASGI scope")
        for name, v in (("on_no_account", on_no_account), ("on_table_full", on_table_full), ("on_no_limit", on_no_limit)):
            if v not in ("deny", "allow"):
                raise ValueError(f"{name} must be 'deny' or 'allow', not {v!r}")
        self.app = app
        self.limiter = limiter
        self.account = account
        self.tier = tier
        self.cost = cost
        self.methods = frozenset(m.upper() for m in methods)
        self.on_no_account = on_no_account
        self.on_table_full = on_table_full
        self.on_no_limit = on_no_limit
        self.max_body_bytes = max_body_bytes
        self._paths_fn: PathsFn | None = None
        self._exact: frozenset[str] | None = None
        self._prefixes: tuple[str, ...] = ()
        if callable(paths):
            self._paths_fn = paths
        elif paths is not None:
            if isinstance(paths, str):
                paths = [paths]
            self._exact = frozenset(p for p in paths if not p.endswith("*"))
            self._prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))

    def _limited(self, scope: Scope) -> bool:
        if scope.get("method", "GET").upper() not in self.methods:
            return False
        if self._paths_fn is not None:
            return bool(self._paths_fn(scope))
        if self._exact is None:
            return True
        path = scope.get("path", "")
        return path in self._exact or path.startswith(self._prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not self._limited(scope):
            await self.app(scope, receive, send)
            return

        chunks = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # client gone before sending its body: nothing to answer
            chunk = msg.get("body", b"")
            if chunk:
                size += len(chunk)
                if self.max_body_bytes is not None and size > self.max_body_bytes:
                    await _respond(
                        send,
                        413,
                        _error_json(
                            f"Request body larger than {self.max_body_bytes} bytes.", "invalid_request_error", None, None
                        ),
                    )
                    return
                chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)

        # The library's parse, not json.loads: the model it limits is the
        # model every binding (and, unambiguously, the upstream) reads.
        try:
            model = body_model(body)
        except BodyError as e:
            await _respond(send, 400, _BODY_REFUSALS.get(e.status, _NOT_JSON))
            return
        if not model:
            await _respond(send, 400, _NO_MODEL)
            return

        acct = await _maybe_await(self.account(scope))
        replay = _Replay(body, receive)
        if not acct:  # None, "" or b"": no API key
            if self.on_no_account == "allow":
                await self.app(scope, replay, send)
            else:
                await _respond(send, 401, _NO_API_KEY)
            return
        tier = await _maybe_await(self.tier(scope)) if callable(self.tier) else self.tier
        if callable(self.cost):
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                # The scanner took it, Python's json cannot (nesting past
                # the recursion limit, integers past int_max_str_digits).
                await _respond(send, 400, _NOT_JSON)
                return
            cost = await _maybe_await(self.cost(scope, parsed))
        else:
            cost = self.cost

        # At most BODY_MODEL_MAX bytes (the scanner cuts longer values), so
        # quoting it keeps every answer small.
        model_text = model.decode("utf-8", "replace")
        try:
            decision = self.limiter.check(acct, model, tier, cost)
        except UnknownModel:
            await _respond(send, 404, unknown_model_body(model))
            return
        except NoLimitConfigured:
            if self.on_no_limit == "allow":
                await self.app(scope, replay, send)
                return
            await _respond(
                send,
                403,
                _error_json(
                    f"Your tier has no access to the model `{model_text}`: no rate limit is configured for it.",
                    "invalid_request_error",
                    "model",
                    "no_limit_configured",
                ),
            )
            return
        except TableFull:
            if self.on_table_full == "allow":
                await self.app(scope, replay, send)
                return
            await _respond(
                send,
                503,
                _error_json(
                    "The rate limiter is at capacity; please retry later.", "server_error", None, "rate_limiter_full"
                ),
            )
            return
        except CostTooLarge:
            await _respond(
                send,
                400,
                _error_json(
                    f"This request counts for {cost} requests, more than the rate limit for `{model_text}` can ever "
                    "admit.",
                    "invalid_request_error",
                    None,
                    "cost_too_large",
                ),
            )
            return
        except InvalidArgument as e:
            if e.status == _ffi.TG_E_ACCOUNT:
                # Empty or longer than 64 bytes: no usable key, as nginx says.
                await _respond(send, 401, _NO_API_KEY)
                return
            # The library's messages quote at most a bounded prefix of a value.
            await _respond(send, 400, _error_json(f"Invalid request: {e}", "invalid_request_error", None, None))
            return

        if not decision.allowed:
            await _respond(send, 429, decision.error_body.encode("utf-8"), decision.header_items)
            return

        scope[DECISION_SCOPE_KEY] = decision
        await self.app(scope, replay, _HeaderInjector(send, decision))


class _Replay:
    """The app's receive: the buffered body first, then the real channel
    (which reports http.disconnect when the client leaves)."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        body, self._body = self._body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()


class _HeaderInjector:
    """The app's send: adds the decision's headers to http.response.start
    (replacing any of the same name the app set) and passes every other
    message straight through, so streamed bodies stay streamed."""

    __slots__ = ("_decision", "_send")

    def __init__(self, send: Send, decision: Decision) -> None:
        self._send = send
        self._decision = decision

    async def __call__(self, message: Message) -> None:
        if message.get("type") == "http.response.start":
            ours = self._decision.header_items
            names = {k for k, _ in ours}
            headers = [(k, v) for k, v in message.get("headers") or () if bytes(k).lower() not in names]
            headers.extend(ours)
            message = dict(message)
            message["headers"] = headers
        await self._send(message)


async def _respond(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})
