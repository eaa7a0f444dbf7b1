"""A stand-in for an OpenAI-compatible `vllm serve` on loopback, for client / server-manager tests.

    python tests/fake_openai_server.py PORT [--fail-first N] [--delay S] [--reply TEXT]

GET /health -> 200. POST /v1/completions -> one choice per prompt whose text is --reply (or, when
the prompt contains "policy-first", "[[A]]"), with top_logprobs favouring "A"; the first N posts
answer 503; each post waits --delay seconds first.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_server(port: int, *, fail_first: int = 0, delay: float = 0.0, reply: str | None = None) -> ThreadingHTTPServer:
    state = {"posts": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200 if self.path == "/health" else 404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["posts"] += 1
                posts = state["posts"]
            time.sleep(delay)
            if posts <= fail_first:
                return self._send(503, {"error": "warming up"})
            if "prompt" not in body or "model" not in body:
                return self._send(400, {"error": "prompt and model are required"})
            choices = []
            for index, prompt in enumerate(body["prompt"]):
                text = reply if reply is not None else ("[[A]]" if "policy-first" in prompt else "[[B]]")
                top = {"A": -0.1, "B": -2.5, "C": -4.0}
                choices.append({"index": index, "text": text, "logprobs": {"top_logprobs": [top]}})
            self._send(200, {"choices": choices[::-1]})  # out of order on purpose: clients sort by index

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--reply")
    args = parser.parse_args()
    make_server(args.port, fail_first=args.fail_first, delay=args.delay, reply=args.reply).serve_forever()
