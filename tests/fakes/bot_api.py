"""A local HTTP server that plays Telegram's Bot API (and ntfy): records requests, answers from a script.

The notifiers take a base URL, so the real ``requests`` code path runs against this stand-in.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: A planted secret: tests check it never appears in logs, files or outputs.
TOKEN = "987654321:AAH-planted-SECRET-token_xyz"


class BotApi:
    """A local stand-in for api.telegram.org / ntfy: records requests and plays scripted answers."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple] = []  # ("ok",), ("429", retry_after), ("500",), ("hang",)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)  # released once per request received
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                action = api.script.pop(0) if api.script else ("ok",)
                api.entered.release()
                if action[0] == "hang":
                    api.release.wait(30)
                    return
                if action[0] == "429":
                    self._reply(429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                                      "parameters": {"retry_after": action[1]}})
                elif action[0] == "500":
                    self._reply(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
                else:
                    self._reply(200, {"ok": True, "result": {"message_id": len(api.requests)}})

            def _reply(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_requests(self, n: int) -> None:
        for _ in range(n):
            assert self.entered.acquire(timeout=10), "the server did not receive the expected request"

    def texts(self) -> list[str]:
        return [json.loads(r["body"])["text"] for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
