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

Run standalone: python3 upstream.py PORT
"""

import hashlib
import http.server
import json
import sys
import threading
import time


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

    def do_POST(self):
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
            self.close_connection = True
            return
        time.sleep(delay)
        chunk([{"index": 0, "delta": {"content": "k"},
                "finish_reason": "stop"}])
        if (doc.get("stream_options") or {}).get("include_usage"):
            time.sleep(delay)
            chunk([], usage=usage)
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
