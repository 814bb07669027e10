"""A stand-in for OpenAI's chat completions endpoint over real HTTP, for the paid-fallback tests
(no test may reach a real paid API). Answers every request with a fixed reply and usage, and
counts the calls it received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """``with FakeOpenAI() as f: f.base_url``; ``f.calls`` lists the request bodies."""

    def __init__(self, reply: str = "paid answer", prompt_tokens: int = 1000,
                 completion_tokens: int = 2000) -> None:
        self.reply, self.usage = reply, (prompt_tokens, completion_tokens)
        self.calls: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append(body)
                out = json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": fake.reply}}],
                    "usage": {"prompt_tokens": fake.usage[0],
                              "completion_tokens": fake.usage[1],
                              "total_tokens": sum(fake.usage)},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
