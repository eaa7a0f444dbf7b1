"""Engines as OpenAI-compatible servers on loopback (``vllm serve``), for opponents and the judge:
started and stopped by the run, health-checked, called with timeouts and retries.

    server = ServedEngine(vllm_serve_command(model_dir, engine_cfg, port=8101), port=8101)
    server.start()                                    # waits for GET /health
    client = CompletionsClient(server.base_url, model=model_dir)
    texts = client.complete(["<rendered prompt>"], max_new_tokens=256)
    server.stop()

These run outside the trainer's process group (their own processes, their own GPUs through
CUDA_VISIBLE_DEVICES), so an opponent's TP layout is independent of the trainer's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from megatron_elo.config.schema import EngineConfig


class ServerError(RuntimeError):
    """A served engine did not start, stopped answering, or kept failing after its retries."""


def vllm_serve_command(model_dir: str, engine: EngineConfig, *, port: int, dtype: str = "bfloat16") -> list[str]:
    """The ``vllm serve`` command line for ``model_dir`` under ``engine``'s layout, on 127.0.0.1:port."""
    command = ["vllm", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
               "--tensor-parallel-size", str(engine.tp), "--max-model-len", str(engine.max_model_len),
               "--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    if engine.enforce_eager:
        command.append("--enforce-eager")
    if engine.kv_cache_gib is not None:
        command += ["--kv-cache-memory-bytes", str(int(engine.kv_cache_gib * 2**30))]
    return command


class ServedEngine:
    """One server process: ``start`` launches it and waits until GET /health answers 200."""

    def __init__(self, command: Sequence[str], *, port: int, devices: Sequence[int] | None = None,
                 startup_timeout_s: float = 900.0, log_path: str | Path | None = None):
        self.command = list(command)
        self.port = port
        self.devices = devices
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when the server answers GET /health with 200."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        """Launch (if not running) and block until healthy; ServerError if it exits or times out."""
        if self.process is not None and self.process.poll() is None:
            return
        env = dict(os.environ)
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in self.devices)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (owned by the process)
        self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.command[:3]} exited with code {self.process.returncode} before answering "
                                  f"/health (log: {self.log_path or 'not kept; set a log path'})")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"{self.command[:3]} did not answer {self.base_url}/health within {self.startup_timeout_s:.0f} s")

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate the process (kill after ``grace_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CompletionsClient:
    """POST /v1/completions with a timeout per request and retries with exponential backoff on
    connection errors, timeouts and 5xx / 429 answers (4xx other than 429 fail at once: the request is wrong)."""

    def __init__(self, base_url: str, *, model: str, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def _post(self, body: dict) -> dict:
        data = json.dumps({"model": self.model, **body}).encode()
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(f"{self.base_url}/v1/completions", data=data,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code < 500 and err.code != 429:
                    raise ServerError(f"{self.base_url}: HTTP {err.code}: {err.read()[:300]!r}") from err
                last_error = err
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                last_error = err
        raise ServerError(f"{self.base_url}: no answer after {self.retries + 1} attempts: {last_error}")

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> list[str]:
        """One completion per prompt, in prompt order (one batched request)."""
        body = {"prompt": list(prompts), "max_tokens": max_new_tokens, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        choices = sorted(self._post(body)["choices"], key=lambda c: c["index"])
        return [c["text"] for c in choices]

    def choice_logprobs(self, prompts: Sequence[str], choices: Sequence[str], *, top: int = 20) -> list[list[float]]:
        """log p(first token = choice) from the top-``top`` log-probs of one generated token; a choice
        outside the top gets -inf. Exact for single-token choices (the judge's letters)."""
        answer = self._post({"prompt": list(prompts), "max_tokens": 1, "temperature": 0.0, "logprobs": top})
        rows = []
        for item in sorted(answer["choices"], key=lambda c: c["index"]):
            top_logprobs = (item.get("logprobs") or {}).get("top_logprobs") or [{}]
            first = top_logprobs[0]
            rows.append([float(first.get(c, -math.inf)) for c in choices])
        return rows
