"""ASGI middleware: rate limits an OpenAI-compatible API with a Limiter.

Works with any ASGI app (Starlette, FastAPI, plain ASGI callables); neither
framework is needed. Every answer is the library's: for each request whose
method the core limits (POST) it buffers the body and hands method, account,
tier, cost and body to one ``tg_answer_request`` call, which takes every
step in the order all bindings share (method, account, the body's model,
tier, the limit) and says what to send: a status, headers and a JSON body
(429, 404, 403, 401, 400, 503, 500), or pass upstream with the six
``x-ratelimit-*`` headers added to the app's response start. The middleware
holds no answer text and parses nothing: the same request gets the same
answer from nginx, the C++ header and this middleware (tests/conformance.json
is run through each). Response bodies are never buffered, so streamed (SSE)
responses keep streaming.

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

import asyncio
import inspect
import json
import warnings
from collections.abc import Awaitable, Collection, Iterable, MutableMapping
from ctypes import byref, c_size_t, create_string_buffer
from typing import Any, Callable, Union

from . import _ffi
from ._answer import answer_for, answer_request, answer_request_waiting, method_limited
from ._body import body_model
from ._decision import Decision
from ._limiter import Limiter
from ._tier import Tier, tier_parse
from ._tokens import Ticket, UsageReader, ending_without_body, settle
from .errors import BodyError, InvalidArgument, InvalidArgumentType, TollgateError, error_for

__all__ = [
    "ANSWER_SCOPE_KEY",
    "DECISION_SCOPE_KEY",
    "RateLimitMiddleware",
    "account_digest",
    "bearer_token",
    "bearer_token_digest",
    "header",
]

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
#: Key under which the core's Answer for a request passed to the app is put
#: in the scope: ``outcome`` (PASSED, DRY_RUN, NO_LIMIT, ...) and, in a dry
#: run, ``would_status``.
ANSWER_SCOPE_KEY = "tollgate.answer"


def header(scope: Scope, name: str) -> str | None:
    """The first request header called ``name`` (case-insensitive), decoded
    as latin-1, or None."""
    raw = _header_bytes(scope, name)
    return None if raw is None else raw.decode("latin-1")


def _header_bytes(scope: Scope, name: str) -> bytes | None:
    want = name.lower().encode("latin-1")
    for k, v in scope.get("headers") or ():
        if k.lower() == want:
            return bytes(v)
    return None


def bearer_token(scope: Scope) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, as the library
    reads it for every binding (``tg_bearer_key``), or None. Keys longer
    than 64 bytes are refused by the limiter as accounts: use
    :func:`bearer_token_digest` for those."""
    auth = _header_bytes(scope, "authorization")
    if auth is None:
        return None
    start, length = c_size_t(), c_size_t()
    st = _ffi.tg_bearer_key(auth, len(auth), byref(start), byref(length))
    if st == _ffi.TG_E_NO_ACCOUNT:
        return None
    if st:
        raise error_for(st, "tg_bearer_key")
    return auth[start.value : start.value + length.value].decode("latin-1")


def bearer_token_digest(scope: Scope) -> str | None:
    """The account id of the bearer key: the library's 32-hex-digit digest of
    it (``tg_bearer_digest``, BLAKE2b-128), the id nginx's
    ``$tollgate_bearer_digest`` and the tower layer's ``bearer_digest`` give
    for the same key, so hosts sharing a table or a quota store count it
    under one account. It fits the limiter's 64-byte account ids whatever the
    key's length and keeps raw keys out of the shared table file. None
    without a bearer key."""
    auth = _header_bytes(scope, "authorization")
    if auth is None:
        return None
    out = create_string_buffer(_ffi.TG_ACCOUNT_DIGEST_LEN + 1)
    written = c_size_t()
    st = _ffi.tg_bearer_digest(auth, len(auth), out, len(out), byref(written))
    if st == _ffi.TG_E_NO_ACCOUNT:
        return None
    if st:
        raise error_for(st, "tg_bearer_digest")
    return out.raw[: written.value].decode("ascii")


def account_digest(key: str | bytes) -> str:
    """The account id the library makes of an API key (``tg_account_digest``:
    32 hex digits of its BLAKE2b-128 digest), for keys a gateway takes from
    elsewhere than a bearer header; ``tollgate digest`` prints the same. A
    str is encoded as latin-1, as header values are decoded."""
    raw = key.encode("latin-1") if isinstance(key, str) else bytes(key)
    out = create_string_buffer(_ffi.TG_ACCOUNT_DIGEST_LEN + 1)
    written = c_size_t()
    st = _ffi.tg_account_digest(raw, len(raw), out, len(out), byref(written))
    if st:
        raise error_for(st, "tg_account_digest")
    return out.raw[: written.value].decode("ascii")


def _tier_name(tier: object) -> bytes:
    """The tier as the name the core parses: a str as given (the core
    parses it; an unknown name is its 500), a Tier or its number by name."""
    if isinstance(tier, str):
        return tier.encode("utf-8", "replace")
    if isinstance(tier, int) and not isinstance(tier, bool):
        try:
            return Tier(tier).name.encode("ascii")
        except ValueError:
            return str(tier).encode("ascii")  # no tier: the core says so
    raise InvalidArgumentType(_ffi.TG_E_INVALID, f"tier must be a str, int or Tier, not {type(tier).__name__}")


def _account_bytes(acct: object) -> bytes | None:
    if acct is None:
        return None
    if isinstance(acct, str):
        b = acct.encode("utf-8", "surrogateescape")
    elif isinstance(acct, (bytes, bytearray, memoryview)):
        b = bytes(acct)
    else:
        raise InvalidArgumentType(_ffi.TG_E_INVALID, f"account must be str or bytes, not {type(acct).__name__}")
    return b or None  # "" or b"": no API key


def _cost_value(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgumentType(_ffi.TG_E_INVALID, f"cost must be an int, not {type(v).__name__}")
    if not 0 <= v <= 0xFFFFFFFF:
        raise InvalidArgument(_ffi.TG_E_INVALID, f"cost={v} out of range 0..{0xFFFFFFFF}")
    return int(v)


def _body_model_or_none(body: bytes) -> bytes | None:
    try:
        return body_model(body)
    except BodyError:
        return None


async def _maybe_await(v: Any) -> Any:
    if inspect.isawaitable(v):
        return await v
    return v


_NO_WAIT = _ffi.TG_ANSWER_NO_WAIT

# What account, tier and cost callables return when they are not async:
# these skip the awaitable check (and the coroutine _maybe_await makes).
_PLAIN = frozenset({str, bytes, int, type(None)})


class RateLimitMiddleware:
    """Limits requests per (account, model) with a :class:`tollgate.Limiter`;
    every answer (status, headers, body) is the library's.

    Parameters:
      app: the ASGI app to wrap.
      limiter: the Limiter (use ``Limiter.open(path, ...)`` to share limits
        across worker processes, and ``redis=...`` to share them across
        hosts: a decision that needs a round trip to Redis is then made on
        the event loop's default executor, never on the loop itself).
      account: ``account(scope)`` gives the account id (str or bytes, at most
        64 bytes); may be async. None (or empty) means the request has no API
        key: see ``on_no_account``.
      tier: a tier ("free", "developer", "enterprise" in any case, or a
        Tier), or ``tier(scope)`` giving one; may be async. The library
        parses the name; one it does not know is its 500 answer.
      cost: requests this call counts for, or ``cost(scope, body)`` giving it
        from the parsed JSON body, called only for a request with an account
        whose body the library's scanner took (a body Python's json cannot
        parse, e.g. nested past its recursion limit, then gets the library's
        400 for a body that is not JSON).
      paths: which paths are limited: None (all), a collection of exact paths
        (an entry ending in ``*`` is a prefix), or ``paths(scope) -> bool``.
      methods: deprecated. Which methods are limited is the library's rule
        (only POST, as in nginx); ``methods`` can only narrow it (a listed
        method the library does not limit is a ValueError).
      on_no_account: "deny" (401, default) or "allow" (the request passes,
        unlimited) when ``account`` gives None.
      on_table_full: "deny" (503, default) or "allow" (fail open) when the
        table has no slot for a new key.
      on_no_limit: "deny" (403, default) or "allow" when the policy has no
        limit for the tier and model (e.g. the Free tier by default).
      dry_run: decide and count, but pass every request upstream; the Answer
        in ``scope["tollgate.answer"]`` keeps the ``would_status``.
      refuse_status: the status of a refusal over a limit, 100..999
        (default 429; 0 is the library's default, 429).
      max_body_bytes: largest body buffered to find the model; above it the
        library's 413 answer. None for no cap beyond the server's.

    A request passed to the app gets the library's headers (the six
    ``x-ratelimit-*`` when it was decided) added to the response start, its
    Decision in ``scope["tollgate.decision"]`` and the Answer in
    ``scope["tollgate.answer"]``. Requests the library does not limit (not
    POST), paths not selected, and non-HTTP scopes (lifespan, websocket)
    pass through untouched and unread.
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
        methods: Iterable[str] | None = None,
        on_no_account: str = "deny",
        on_table_full: str = "deny",
        on_no_limit: str = "deny",
        dry_run: bool = False,
        refuse_status: int = 429,
        max_body_bytes: int | None = None,
    ) -> None:
        if not callable(account):
            raise TypeError("account must be a callable taking the ASGI scope")
        flags = 0
        for name, v, flag in (
            ("on_no_account", on_no_account, _ffi.TG_ANSWER_NO_ACCOUNT_PASS),
            ("on_table_full", on_table_full, _ffi.TG_ANSWER_TABLE_FULL_OPEN),
            ("on_no_limit", on_no_limit, _ffi.TG_ANSWER_NO_LIMIT_PASS),
        ):
            if v not in ("deny", "allow"):
                raise ValueError(f"{name} must be 'deny' or 'allow', not {v!r}")
            if v == "allow":
                flags |= flag
        if dry_run:
            flags |= _ffi.TG_ANSWER_DRY_RUN
        if isinstance(refuse_status, bool) or not isinstance(refuse_status, int):
            raise TypeError(f"refuse_status must be an int, not {type(refuse_status).__name__}")
        try:
            # The library checks the options: ask it for any answer once
            # (ctypes would wrap a number past 32 bits, so not those).
            if not 0 <= refuse_status <= 0xFFFFFFFF:
                raise InvalidArgument(_ffi.TG_E_INVALID, "refuse_status")
            answer_for(_ffi.TG_E_NO_ACCOUNT, b"", flags, refuse_status)
        except InvalidArgument:
            raise ValueError(f"refuse_status must be an HTTP status 100..999, not {refuse_status}") from None
        if not callable(tier):
            tname = _tier_name(tier)
            if tier_parse(tname) is None:
                raise ValueError(f"unknown tier {tier!r}: use free, developer or enterprise")
            self._tier_bytes = tname
        self._methods: frozenset[bytes] | None = None
        if methods is not None:
            warnings.warn(
                "RateLimitMiddleware(methods=...) is deprecated: the library decides which methods are "
                "limited (POST); methods can only narrow that",
                DeprecationWarning,
                stacklevel=2,
            )
            ms = frozenset(m.upper().encode("latin-1") for m in methods)
            wrong = sorted(m.decode("latin-1") for m in ms if not method_limited(m))
            if wrong:
                raise ValueError(f"methods {wrong} are not limited by the library (only POST is); leave them out")
            self._methods = ms
        self.app = app
        self.limiter = limiter
        self.account = account
        self.tier = tier
        self.cost = cost
        self.flags = flags
        self.refuse_status = refuse_status
        self.max_body_bytes = max_body_bytes
        self._limited_methods: dict[str, bool] = {}
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
        method = scope.get("method", "GET")
        limited = self._limited_methods.get(method)
        if limited is None:
            # The library's rule, remembered per spelling (a handful).
            mb = method.encode("latin-1", "replace")
            limited = method_limited(mb) and (self._methods is None or mb in self._methods)
            if len(self._limited_methods) < 64:
                self._limited_methods[method] = limited
        if not limited:
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
                    ans = answer_for(_ffi.TG_E_BODY_TOO_LARGE, b"", self.flags, self.refuse_status)
                    await _respond(send, ans.status, ans.headers, ans.body)
                    return
                chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)

        acct = self.account(scope)
        if type(acct) not in _PLAIN:
            acct = await _maybe_await(acct)
        acct = _account_bytes(acct)
        if callable(self.tier):
            t = self.tier(scope)
            if type(t) not in _PLAIN:
                t = await _maybe_await(t)
            tier = _tier_name(t)
        else:
            tier = self._tier_bytes
        cost_fn = self.cost
        cost = 0 if callable(cost_fn) else cost_fn
        # A cost callable is asked only when the library would go on to
        # count: the request has an account and a body its scanner takes
        # (otherwise it refuses before the limit, and the cost is unused).
        model = _body_model_or_none(body) if callable(cost_fn) and acct is not None else None
        if model is not None and callable(cost_fn):
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                # The scanner took it, Python's json cannot (nesting past
                # the recursion limit, integers past int_max_str_digits).
                ans = answer_for(_ffi.TG_E_BODY_NOT_JSON, model, self.flags, self.refuse_status)
                await _respond(send, ans.status, ans.headers, ans.body)
                return
            cost = _cost_value(await _maybe_await(cost_fn(scope, parsed)))
        flags = self.flags
        got = answer_request(self.limiter, b"POST", acct, tier, body, cost, flags | _NO_WAIT, self.refuse_status)
        if got is None:
            # The decision needs a round trip to the quota store (a limiter
            # joined with redis=...): made on the loop's default executor,
            # so the event loop never waits for Redis.
            got = await asyncio.get_running_loop().run_in_executor(
                None, answer_request_waiting, self.limiter, b"POST", acct, tier, body, cost, flags, self.refuse_status
            )
        ans = got
        if ans.status:
            await _respond(send, ans.status, ans.headers, ans.body)
            return
        decision = ans.decision
        if decision is not None:
            scope[DECISION_SCOPE_KEY] = decision
        scope[ANSWER_SCOPE_KEY] = ans
        ours = ans.headers
        tokens = ans.tokens
        ticket = None if tokens is None else tokens.ticket
        held = decision if decision is not None and not decision.released else None
        if ticket is None and held is None:
            await self.app(scope, _Replay(body, receive), _HeaderInjector(send, ours) if ours else send)
            return
        # A token reservation or an in-flight unit: the request is told how
        # it ended, once. The response is read for its usage as it passes
        # (never held back); the reservation is settled when its last chunk
        # passes and the unit released once that chunk is sent, or both as
        # cut when the app raises, the task is cancelled or the client goes
        # away first.
        ender = _Ender(self.limiter, ticket, held, send, ours)
        replay: _Replay | _Watch = _Replay(body, receive) if held is None else _Watch(body, receive, ender)
        try:
            await self.app(scope, replay, ender)
        finally:
            ender.end(cut=True)
            if isinstance(replay, _Watch):
                replay.stop()


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
    """The app's send: adds the library's headers to http.response.start
    (replacing any of the same name the app set) and passes every other
    message straight through, so streamed bodies stay streamed."""

    __slots__ = ("_headers", "_send")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._headers = headers

    async def __call__(self, message: Message) -> None:
        if message.get("type") == "http.response.start":
            ours = self._headers
            names = {k for k, _ in ours}
            headers = [(k, v) for k, v in message.get("headers") or () if bytes(k).lower() not in names]
            headers.extend(ours)
            message = dict(message)
            message["headers"] = headers
        await self._send(message)


class _Watch(_Replay):
    """The app's receive for a request holding an in-flight unit: the
    buffered body, then the real channel, read by the middleware from the
    start, so that a client gone (http.disconnect) ends the request at once,
    whether the app listens for it or not (uvicorn drops what is sent to a
    closed connection silently, and an app that never reads would hold the
    unit to its end). The body was read whole, so the channel has nothing
    else to say: its first message is handed to the app when it asks."""

    __slots__ = ("_pump",)

    def __init__(self, body: bytes, receive: Receive, ender: _Ender) -> None:
        super().__init__(body, receive)
        self._pump: asyncio.Future[Message] | None = asyncio.ensure_future(self._listen(receive, ender))

    @staticmethod
    async def _listen(receive: Receive, ender: _Ender) -> Message:
        msg = await receive()
        if msg.get("type") == "http.disconnect":
            ender.end(cut=True)
        return msg

    async def __call__(self) -> Message:
        body, self._body = self._body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        pump = self._pump
        if pump is None:
            return await self._receive()
        # Shielded: an app that stops waiting (a cancelled listener) does
        # not stop the middleware's.
        msg = await asyncio.shield(pump)
        if msg.get("type") != "http.disconnect":
            self._pump = None  # handed over once; then the channel itself
        return msg

    def stop(self) -> None:
        """The app is done: stop listening (its result, if any, unwanted)."""
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
        elif pump is not None and not pump.cancelled():
            pump.exception()  # retrieved, so asyncio does not log it


class _Ender:
    """The app's send for a request that must be told how it ended (a token
    reservation to settle, an in-flight unit to release): adds the library's
    headers as _HeaderInjector does, feeds every body chunk to the library's
    usage reader on its way out, settles the reservation once
    (tollgate/_tokens.py) when the last chunk passes, and releases the unit
    once that chunk is sent, with the same ending; or both, cut, when the
    app is done (or the client gone) without it."""

    __slots__ = ("_decision", "_ending", "_inject", "_limiter", "_reader", "_status", "_ticket")

    def __init__(
        self,
        limiter: Limiter,
        ticket: Ticket | None,
        decision: Decision | None,
        send: Send,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._inject = _HeaderInjector(send, headers)
        self._limiter = limiter
        self._ticket: Ticket | None = ticket
        self._decision: Decision | None = decision
        self._reader: UsageReader | None = None
        self._status = 0
        self._ending: int | None = None

    async def __call__(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self._status = int(message.get("status", 0))
            if self._ticket is not None:
                ct = next(
                    (bytes(v) for k, v in message.get("headers") or () if bytes(k).lower() == b"content-type"), None
                )
                self._reader = UsageReader.open(ct)
        elif kind == "http.response.body":
            chunk = message.get("body", b"")
            if self._reader is not None and chunk:
                self._reader.feed(bytes(chunk))
            if not message.get("more_body", False):
                ending = self._settle(cut=False)
                try:
                    await self._inject(message)
                except BaseException:
                    self._release(_ffi.TG_END_CUT)  # the last chunk never left
                    raise
                self._release(ending)
                return
        await self._inject(message)

    def end(self, cut: bool) -> None:
        """Ends the request, once: settled and released (no-ops if done)."""
        self._release(self._settle(cut))

    def _settle(self, cut: bool) -> int:
        """How the response ended (a TG_END_* value), worked out once: by the
        usage read, else by its status (the library's rule); the reservation
        settled with it."""
        ending = self._ending
        if ending is not None:
            return ending
        used = 0
        if self._reader is not None:
            try:
                ending, used = self._reader.finish(self._status, cut)
            except TollgateError as e:  # never let this break a response
                warnings.warn(f"tollgate: reading a response's usage failed: {e}", RuntimeWarning, stacklevel=2)
        if ending is None:
            # No usage read: the library's rule for a response without it.
            ending = ending_without_body(self._status or 500, cut)
        self._ending = ending
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            try:
                settle(self._limiter, ticket, ending, used, None)
            except TollgateError as e:
                warnings.warn(f"tollgate: settling a token reservation failed: {e}", RuntimeWarning, stacklevel=2)
        return ending

    def _release(self, ending: int) -> None:
        decision, self._decision = self._decision, None
        if decision is None:
            return
        try:
            decision.release(ending)  # nothing if the app released it itself
        except TollgateError as e:  # never let releasing break a response
            warnings.warn(f"tollgate: releasing an in-flight unit failed: {e}", RuntimeWarning, stacklevel=2)


async def _respond(send: Send, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
    # The library's status, headers and body; content-length is framing.
    out = list(headers)
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})
