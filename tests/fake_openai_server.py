"""A stand-in for vLLM's OpenAI-compatible server on loopback (token ids in and out, as the run
starts it with --skip-tokenizer-init), for client / server-manager tests.

    python tests/fake_openai_server.py PORT [--fail-first N] [--delay S]

GET /health -> 200. POST /v1/completions, ``prompt`` a list of token-id lists:
- with ``prompt_logprobs``: each prompt token t after the first gets log-prob -0.01 * t;
- with ``logprobs`` > 0 and ``max_tokens`` 1: one token whose top log-probs are -0.01 * t for every
  token t < 512 (named "token_id:<t>", as vLLM's --return-tokens-as-token-ids does);
- else ``n`` choices per prompt whose token ids encode --reply (default: "[[A]]" when the decoded
  prompt contains "policy-first", else "[[B]]") with the tokenizer given to ``make_server`` (without
  one: ids [7, 8, 9]), each token's log-prob -0.5.
Greedy requests with n > 1 get 400 (as vLLM answers), and so does a prompt longer than
``max_prompt_len``; the first N posts answer 503; each post waits --delay seconds first. ``server.requests`` keeps every request body.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_server(port: int, *, fail_first: int = 0, delay: float = 0.0, reply: str | None = None,
                tokenizer=None, max_prompt_len: int | None = None) -> ThreadingHTTPServer:
    state = {"posts": 0}
    lock = threading.Lock()
    requests: list[dict] = []

    def answer_ids(prompt: list[int]) -> list[int]:
        if tokenizer is None:
            return [7, 8, 9]
        text = reply if reply is not None else ("[[A]]" if "policy-first" in tokenizer.decode(prompt) else "[[B]]")
        return tokenizer.encode(text, add_special_tokens=False)

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
                requests.append(body)
            time.sleep(delay)
            if posts <= fail_first:
                return self._send(503, {"error": "warming up"})
            if "prompt" not in body or "model" not in body:
                return self._send(400, {"error": "prompt and model are required"})
            too_long = [len(p) for p in body["prompt"] if max_prompt_len is not None and len(p) > max_prompt_len]
            if too_long:
                return self._send(400, {"error": f"prompt of {too_long[0]} tokens is longer than max_model_len"})
            n = body.get("n", 1)
            if body.get("temperature") == 0.0 and n > 1:
                return self._send(400, {"error": f"n must be 1 when using greedy sampling, got {n}."})
            choices = []
            for index, prompt in enumerate(body["prompt"]):
                if body.get("prompt_logprobs") is not None:
                    positions = [None] + [{str(t): {"logprob": -0.01 * t, "rank": 1}} for t in prompt[1:]]
                    choices.append({"index": index, "text": "", "token_ids": [0], "prompt_logprobs": positions})
                    continue
                if body.get("logprobs") and body.get("max_tokens") == 1:
                    top = {f"token_id:{t}": -0.01 * t for t in range(512)}
                    choices.append({"index": index, "text": "", "token_ids": [0], "finish_reason": "length",
                                    "logprobs": {"token_logprobs": [0.0], "top_logprobs": [top]}})
                    continue
                ids = answer_ids(prompt)
                for j in range(n):
                    choices.append({"index": index * n + j, "text": "", "token_ids": ids, "finish_reason": "stop",
                                    "logprobs": {"token_logprobs": [-0.5] * len(ids)}})
            self._send(200, {"choices": choices[::-1]})  # out of order on purpose: clients sort by index

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.requests = requests
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    make_server(args.port, fail_first=args.fail_first, delay=args.delay).serve_forever()
