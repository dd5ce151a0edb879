"""A tiny OpenAI-compatible chat completions upstream for the nginx tests.

It answers every POST like /v1/chat/completions and reports what body
arrived (X-Body-Length, X-Body-Sha256 headers and the same in the JSON), so
tests can check that nginx passed the body on whole. GET answers "ok".
Every answer carries X-Upstream: answered, so a test can tell the
upstream's answers from the module's.

For the token tests, body fields steer the answer: `test_usage` (an int) is
the usage total it reports, in the JSON body or, with `stream: true`, as
server-sent events (the usage in a last chunk when
`stream_options.include_usage`, then `data: [DONE]`); `test_status` answers
that status without usage; `test_cut` ends a stream after its first chunk,
with neither usage nor [DONE] (the connection closed mid-body);
`test_delay` is the seconds between a stream's chunks; `test_pad` adds that
many bytes to a JSON answer's content.

For the in-flight tests, the upstream counts the POSTs it is serving at once
per account (the bearer key), from the moment it has read one to just
before it sends its last bytes (so nginx cannot have seen a response end
while it is still counted), and keeps the most it saw (`most`). A request
whose connection was closed (nginx gone: killed, or the client went away)
stops counting as soon as a later request of the account arrives, whatever
its thread is doing. Holding: `test_hold` (a tag) holds the answer until
`release(tag)`, `test_hold_for` for that many seconds at most (30 without
it); `hold_account(account)` holds every request of the account until
`release_account(account)`. A held request with `stream: true` sends its
first chunk, then holds, then ends with `data: [DONE]`; without, it holds
before its answer. `test_accel` answers with that X-Accel-Redirect.

Run standalone: python3 upstream.py PORT
"""

import hashlib
import http.server
import json
import select
import socket
import sys
import threading
import time


def alive(sock):
    """The peer has not closed the connection (nothing read, only seen)."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
        if not ready:
            return True
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True
    except (OSError, ValueError):
        return False


class State:
    """What the in-flight tests ask the upstream: requests served at once
    per account, the most seen, and the holds."""

    def __init__(self):
        self.lock = threading.Lock()
        self.serving = {}   # account -> {handler}
        self.most_seen = {}
        self.events = {}    # hold tag -> threading.Event
        self.held_accounts = set()

    def enter(self, account, handler):
        with self.lock:
            now = {h for h in self.serving.get(account, ())
                   if alive(h.connection)}
            now.add(handler)
            self.serving[account] = now
            self.most_seen[account] = max(self.most_seen.get(account, 0),
                                          len(now))

    def leave(self, account, handler):
        with self.lock:
            self.serving.get(account, set()).discard(handler)

    def running(self, account):
        with self.lock:
            now = {h for h in self.serving.get(account, ())
                   if alive(h.connection)}
            self.serving[account] = now
            return len(now)

    def peers(self, account):
        """The ports nginx's connections of the account's requests are
        from."""
        with self.lock:
            return [h.client_address[1]
                    for h in self.serving.get(account, ())
                    if alive(h.connection)]

    def most(self, account):
        with self.lock:
            return self.most_seen.get(account, 0)

    def event(self, tag):
        with self.lock:
            return self.events.setdefault(tag, threading.Event())

    def release(self, tag):
        self.event(tag).set()

    def hold_account(self, account):
        with self.lock:
            self.events["account:" + account] = threading.Event()
            self.held_accounts.add(account)

    def release_account(self, account):
        with self.lock:
            self.held_accounts.discard(account)
        self.release("account:" + account)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, code, payload, extra=()):
        out = json.dumps(payload).encode()
        self._leave()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Upstream", "answered")
        for name, value in extra:
            self.send_header(name, value)
        if self.close_connection:
            # say so: nginx would otherwise keep the connection for its
            # keepalive cache, and a POST on it after we close is a 502
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(out)

    def _account(self):
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else ""

    def _leave(self):
        account = getattr(self, "counted", None)
        if account is not None:
            self.server.state.leave(account, self)
            self.counted = None

    def do_POST(self):
        self.counted = self._account()
        self.server.state.enter(self.counted, self)
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._leave()

    def _post(self):
        body = self._body()
        digest = hashlib.sha256(body).hexdigest()
        try:
            doc = json.loads(body)
            model = doc.get("model", "")
        except (ValueError, AttributeError, RecursionError):
            doc, model = {}, ""
        if isinstance(doc, dict) and ("test_usage" in doc
                                      or "test_status" in doc):
            return self._tokens(doc, model)
        state = self.server.state
        if isinstance(doc, dict) and ("test_hold" in doc
                                      or "test_hold_for" in doc
                                      or "test_accel" in doc
                                      or self.counted in state.held_accounts):
            return self._held(doc, model)
        self._send(200, {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }],
            **({} if self.headers.get("X-Upstream-No-Usage") else {
                "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                          "total_tokens": 2}}),
            "body_length": len(body),
            "body_sha256": digest,
        }, [("X-Body-Length", str(len(body))), ("X-Body-Sha256", digest)]
            + ([("x-ratelimit-limit-requests", "999"),
                ("X-RateLimit-Remaining-Requests", "998"),
                ("X-Upstream-Other", "kept")]
               if self.headers.get("X-Upstream-Ratelimit") else []))

    def _tokens(self, doc, model):
        status = int(doc.get("test_status") or 200)
        if status != 200:
            return self._send(status, {"error": {
                "message": "test failure", "type": "server_error",
                "code": None, "param": None}})
        total = int(doc.get("test_usage") or 0)
        usage = {"prompt_tokens": total // 2,
                 "completion_tokens": total - total // 2,
                 "total_tokens": total}
        if not doc.get("stream"):
            return self._send(200, {
                "id": "chatcmpl-test", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {
                    "role": "assistant",
                    "content": "ok" + "x" * int(doc.get("test_pad") or 0)},
                    "finish_reason": "stop"}],
                "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Upstream", "answered")
        self.end_headers()
        self.wfile.flush()
        delay = float(doc.get("test_delay") or 0)

        def chunk(choices, **extra):
            self._event(json.dumps({
                "id": "chatcmpl-test", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model,
                "choices": choices, **extra}))

        chunk([{"index": 0, "delta": {"role": "assistant",
                                      "content": "o"},
                "finish_reason": None}])
        if doc.get("test_cut"):
            # no last chunk of the chunked encoding: the body is cut
            self._leave()
            self.close_connection = True
            return
        time.sleep(delay)
        chunk([{"index": 0, "delta": {"content": "k"},
                "finish_reason": "stop"}])
        if (doc.get("stream_options") or {}).get("include_usage"):
            time.sleep(delay)
            chunk([], usage=usage)
        self._leave()
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hold(self, doc):
        """Waits for the hold's release, its time, or the connection's end;
        False when nginx closed the connection meanwhile."""
        state = self.server.state
        tag = doc.get("test_hold")
        if tag is None and self.counted in state.held_accounts:
            tag = "account:" + self.counted
        event = state.event(str(tag)) if tag is not None else None
        end = time.monotonic() + float(doc.get("test_hold_for") or 30)
        while time.monotonic() < end:
            if event is not None and event.wait(0.02):
                return True
            if event is None:
                time.sleep(0.02)
            if not alive(self.connection):
                self._leave()
                self.close_connection = True
                return False
        return True

    def _held(self, doc, model):
        if doc.get("test_accel"):
            self._leave()
            self.send_response(200)
            self.send_header("X-Accel-Redirect", doc["test_accel"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not doc.get("stream"):
            if self._hold(doc):
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "message": {
                        "role": "assistant", "content": "ok"},
                        "finish_reason": "stop"}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Upstream", "answered")
        self.end_headers()

        def chunk(delta, finish=None):
            self._event(json.dumps({
                "id": "chatcmpl-test", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta,
                             "finish_reason": finish}]}))

        chunk({"role": "assistant", "content": "o"})
        if not self._hold(doc):
            return
        chunk({"content": "k"}, "stop")
        self._leave()
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _event(self, data):
        out = f"data: {data}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(out), out))
        self.wfile.flush()

    def do_GET(self):
        # a GET may carry a body: read it, or it would be taken for the
        # next request on this kept-alive connection
        self._body()
        out = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Upstream", "answered")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(out)


class Upstream:
    """The server on 127.0.0.1 in a background thread."""

    def __init__(self, port=0):
        http.server.ThreadingHTTPServer.daemon_threads = True
        http.server.ThreadingHTTPServer.request_queue_size = 256
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                      Handler)
        self.server.state = self.state = State()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    with Upstream(int(sys.argv[1])) as up:
        print(f"upstream on 127.0.0.1:{up.port}", flush=True)
        up.thread.join()
