"""A tiny OpenAI-compatible chat completions upstream for the nginx tests.

It answers every POST like /v1/chat/completions and reports what body
arrived (X-Body-Length, X-Body-Sha256 headers and the same in the JSON), so
tests can check that nginx passed the body on whole. GET answers "ok".

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
            model = json.loads(body).get("model", "")
        except (ValueError, AttributeError, RecursionError):
            model = ""
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
            "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                      "total_tokens": 2},
            "body_length": len(body),
            "body_sha256": digest,
        }, [("X-Body-Length", str(len(body))), ("X-Body-Sha256", digest)]
            + ([("x-ratelimit-limit-requests", "999"),
                ("X-RateLimit-Remaining-Requests", "998"),
                ("X-Upstream-Other", "kept")]
               if self.headers.get("X-Upstream-Ratelimit") else []))

    def do_GET(self):
        out = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
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
