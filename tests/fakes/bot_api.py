"""A local HTTP server that plays Telegram's Bot API (and ntfy): records requests, answers from a script.

The notifiers and the bot take a base URL, so the real ``requests`` code path runs against this stand-in.

Besides ``sendMessage`` (and ntfy's topic POSTs), it serves ``getUpdates`` long polling as Telegram documents
it (https://core.telegram.org/bots/api#getupdates), and ``getMe`` (the bot's own user, ``username``): updates carry increasing ``update_id``; ``offset`` returns
updates from that id on and confirms (forgets) every update below it; a negative offset keeps only the last
``-offset`` updates; ``limit`` (1-100, default 100) caps the batch; ``timeout`` (seconds) holds the request open
until an update arrives or the time is up (then ``[]``); a second ``getUpdates`` while one waits ends the first
with 409 Conflict; a wrong token gets 401 Unauthorized. Tests push incoming messages with :meth:`BotApi.push`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

#: A planted secret: tests check it never appears in logs, files or outputs.
TOKEN = "987654321:AAH-planted-SECRET-token_xyz"


class BotApi:
    """A local stand-in for api.telegram.org / ntfy: records requests and plays scripted answers.

    ``requests`` holds every POST other than ``getUpdates`` (sendMessage, ntfy topics); ``script`` scripts
    their answers. ``polls`` holds each ``getUpdates`` call's parameters; ``poll_script`` scripts faults
    for them: ``("500",)``, ``("429", retry_after)``, ``("drop",)`` (connection closed without an answer).
    """

    def __init__(self, token: str = TOKEN, username: str = "atheria_test_bot") -> None:
        self.token = token
        self.username = username
        self.requests: list[dict] = []
        self.script: list[tuple] = []  # ("ok",), ("429", retry_after), ("500",), ("hang",)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)  # released once per request received
        self.polls: list[dict] = []
        self.poll_script: list[tuple] = []
        self._updates: list[dict] = []  # not yet confirmed, oldest first
        self._next_update_id = 700_000_001
        self._next_message_id = 1
        self._cond = threading.Condition()
        self._poll_generation = 0
        self._closed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path.endswith("/getUpdates"):
                    self._get_updates(parts.path, dict(parse_qsl(parts.query)))
                else:
                    self._reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = urlsplit(self.path).path
                if path.endswith("/getUpdates"):
                    params = json.loads(body) if body else {}
                    self._get_updates(path, params)
                    return
                if path.endswith("/getMe"):
                    if path != f"/bot{api.token}/getMe":
                        self._reply(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                    else:
                        self._reply(200, {"ok": True, "result": {"id": int(api.token.split(":")[0]), "is_bot": True,
                                                                 "first_name": "Atheria", "username": api.username}})
                    return
                with api._cond:
                    api.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    api._cond.notify_all()
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

            def _get_updates(self, path, params):
                if path != f"/bot{api.token}/getUpdates":
                    self._reply(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                    return
                with api._cond:
                    api.polls.append(dict(params))
                    api._cond.notify_all()
                action = api.poll_script.pop(0) if api.poll_script else ("ok",)
                if action[0] == "500":
                    self._reply(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
                    return
                if action[0] == "429":
                    self._reply(429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry "
                                      f"after {action[1]}", "parameters": {"retry_after": action[1]}})
                    return
                if action[0] == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                code, payload = api._serve_poll(params)
                self._reply(code, payload)

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

    # ------------------------------------------------------------------ getUpdates
    def _serve_poll(self, params: dict) -> tuple[int, dict]:
        try:
            offset = int(params["offset"]) if params.get("offset") is not None else None
            limit = int(params.get("limit", 100))
            timeout = float(params.get("timeout", 0))
        except (TypeError, ValueError):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: wrong parameter"}
        limit = min(max(limit, 1), 100)
        with self._cond:
            self._poll_generation += 1
            mine = self._poll_generation
            self._cond.notify_all()  # an older poll still waiting gets 409
            if offset is not None and offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            elif offset is not None and offset < 0:
                self._updates = self._updates[offset:]
            deadline = time.monotonic() + timeout
            while not self._updates and not self._closed and self._poll_generation == mine:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._poll_generation != mine:
                return 409, {"ok": False, "error_code": 409, "description": "Conflict: terminated by other "
                             "getUpdates request; make sure that only one bot instance is running"}
            return 200, {"ok": True, "result": [dict(u) for u in self._updates[:limit]]}

    def push(self, chat_id: int, text: str, *, user_id: int | None = None, username: str = "someone",
             date: float | None = None, chat_type: str = "private") -> int:
        """Queue an incoming text message as Telegram would deliver it; returns its ``update_id``."""
        with self._cond:
            update_id, self._next_update_id = self._next_update_id, self._next_update_id + 1
            message_id, self._next_message_id = self._next_message_id, self._next_message_id + 1
            message = {
                "message_id": message_id,
                "from": {"id": user_id if user_id is not None else abs(chat_id), "is_bot": False,
                         "first_name": username.title(), "username": username},
                "chat": {"id": chat_id, "type": chat_type},
                "date": int(time.time() if date is None else date),
                "text": text,
            }
            if text.startswith("/"):
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
            self._updates.append({"update_id": update_id, "message": message})
            self._cond.notify_all()
        return update_id

    def pending_update_ids(self) -> list[int]:
        """Updates not confirmed yet (a getUpdates with a higher offset confirms them)."""
        with self._cond:
            return [u["update_id"] for u in self._updates]

    # ------------------------------------------------------------------ sendMessage
    def wait_requests(self, n: int) -> None:
        for _ in range(n):
            assert self.entered.acquire(timeout=10), "the server did not receive the expected request"

    def texts(self) -> list[str]:
        return [json.loads(r["body"])["text"] for r in self.requests]

    def sent(self, method: str = "sendMessage") -> list[dict]:
        """The JSON bodies of the calls to ``method`` (e.g. sendMessage), in order."""
        return [json.loads(r["body"]) for r in list(self.requests) if urlsplit(r["path"]).path.endswith(f"/{method}")]

    def replies(self, chat_id: int | str | None = None) -> list[str]:
        """Texts sent with sendMessage (to ``chat_id`` only, if given)."""
        return [b["text"] for b in self.sent() if chat_id is None or str(b["chat_id"]) == str(chat_id)]

    def wait_for_reply(self, predicate, timeout: float = 30.0) -> str:
        """Block until a sendMessage text satisfies ``predicate``; returns it (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for text in self.replies():
                    if predicate(text):
                        return text
                left = deadline - time.monotonic()
                assert left > 0, f"no reply matched within {timeout}s; replies: {self.replies()}"
                self._cond.wait(left)

    def wait_polls(self, n: int, timeout: float = 30.0) -> list[dict]:
        """Block until at least ``n`` getUpdates calls arrived; returns their parameters."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.polls) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.polls)} getUpdates calls within {timeout}s"
                self._cond.wait(left)
            return list(self.polls)

    def close(self) -> None:
        self.release.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
