"""Serving under load: `lmforge serve` (continuous batching) vs the server a user would otherwise
write, transformers' `generate` behind a minimal FastAPI app, one request at a time.

    python benchmarks/serve.py                        # a random GPT-2-124M-shaped model, 512 positions
    python benchmarks/serve.py --quick                # fewer, shorter requests
    python benchmarks/serve.py --checkpoint /tmp/gemma --max-tokens 32 --concurrency 1,8

Each server runs alone, in a process of its own, on the same model: lmforge as `lmforge serve
CHECKPOINT --precision fp32 --device cpu`, the baseline as `python benchmarks/serve.py
--baseline-app` on the checkpoint's `to_hf` export: a POST /v1/completions route that runs
`model.generate` in a thread under a lock and streams its `TextIteratorStreamer` as OpenAI's SSE
chunks, ending in `data: [DONE]` (it also reports usage, from generate's output ids). Both get
`--threads` torch threads (default: torch's, all physical cores; OMP_NUM_THREADS for lmforge serve,
`torch.set_num_threads` in the baseline); the clients of this process share the machine with them.

At each concurrency level, that many aiohttp clients send the same well-formed streaming
completion requests (short prompts from the standard library's documentation, greedy,
`max_tokens` each; `--serial-requests` of them at one client, where each takes its full time) after
two untimed warm-up requests. Output tokens are the usage the last chunk reports
(`stream_options.include_usage`); a random model never emits EOS, so each request yields
`max_tokens`. Time to first token is to the first chunk with text (transformers' streamer sends
text up to the last space it has seen, which may cost it a token here). p99 is the nearest rank:
the slowest request of fewer than 100.

Into lmforge's load, one request in `--malformed-every` is malformed (bad JSON, wrong types,
negative or huge max_tokens, an unknown model, an over-long prompt, a token id outside the
vocabulary, a missing or wrong API key): each must get the 4xx the server documents, and the
well-formed requests must not notice. The script exits non-zero if one does not, or if any
well-formed request fails on either server.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from fastapi import Request  # the baseline app's route reads it by name (annotations are strings here)

API_KEY = "bench-key"
MODEL = "bench"
GPT2_ASSETS = Path(os.environ.get("LMFORGE_GPT2_ASSETS", Path.home() / ".cache" / "lmforge-test-assets" / "gpt2"))


@dataclasses.dataclass(frozen=True)
class Job:
    """One request: its body and headers as sent, and the status it must get."""

    kind: str  # "good" or the malformation
    body: bytes
    headers: dict
    expected: int = 200
    prompt: int = -1  # the prompt's index, for a well-formed request


@dataclasses.dataclass
class Outcome:
    """What a request got: its status, or the error that spoiled it, and its timings."""

    status: int
    error: str = ""
    tokens: int = 0
    text: str = ""
    first_token_s: float = math.nan
    latency_s: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


def malformed_jobs(context_length: int, vocab_size: int) -> list[Job]:
    """Every malformed request, with the status `lmforge serve` answers it (tests/serve/test_server.py),
    in the order they are sent: the default run's eight are the first eight."""
    def job(kind: str, body, expected: int = 400, key: str | None = API_KEY) -> Job:
        raw = body.encode() if isinstance(body, str) else json.dumps({"max_tokens": 8, "stream": True, **body}).encode()
        return Job(kind, raw, {"Authorization": f"Bearer {key}"} if key else {}, expected)

    good = {"model": MODEL, "prompt": "The cat sat on"}
    return [job("bad JSON", "{not json"), job("temperature a string", {**good, "temperature": "hot"}),
            job("negative max_tokens", {**good, "max_tokens": -1}), job("no API key", good, 401, key=None),
            job("unknown model", {**good, "model": "elsewhere"}, 404),
            job("over-long prompt", {**good, "prompt": "cat " * 2 * context_length}),
            job("huge max_tokens", {**good, "max_tokens": 10**9}), job("wrong API key", good, 401, key="wrong"),
            job("body not an object", "[1, 2]"), job("token id outside vocab", {**good, "prompt": [5, vocab_size + 10**6]})]


def workload(prompts: list[str], count: int, max_tokens: int, malformed: list[Job], malformed_every: int,
             malformed_sent: int) -> list[Job]:
    """`count` well-formed requests with a malformed one after every `malformed_every - 1`; the
    malformed kinds take turns, continuing after the `malformed_sent` of earlier levels."""
    jobs = []
    for index in range(count):
        body = {"model": MODEL, "prompt": prompts[index % len(prompts)], "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        jobs.append(Job("good", json.dumps(body).encode(), {"Authorization": f"Bearer {API_KEY}"}, prompt=index % len(prompts)))
        if malformed_every and (index + 1) % (malformed_every - 1) == 0:
            added = len(jobs) - (index + 1)
            jobs.append(malformed[(malformed_sent + added) % len(malformed)])
    return jobs


def well_formed(jobs_at: dict[int, list[Job]]) -> dict[int, list[Job]]:
    return {clients: [job for job in jobs if job.kind == "good"] for clients, jobs in jobs_at.items()}


async def send(session, url: str, job: Job) -> Outcome:
    """POST one completion request and read its event stream to `[DONE]`."""
    import aiohttp

    start = time.perf_counter()
    try:
        async with session.post(url + "/v1/completions", data=job.body,
                                headers={"Content-Type": "application/json", **job.headers}) as response:
            if response.status != 200:
                return Outcome(response.status, (await response.text())[:200])
            outcome, pieces, done = Outcome(200, "no usage in the stream"), [], False
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                if line.strip() == b"data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[len(b"data: "):])
                if "error" in chunk:
                    return Outcome(200, f"error event: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        if not pieces:
                            outcome.first_token_s = time.perf_counter() - start
                        pieces.append(choice["text"])
                if chunk.get("usage"):
                    outcome.tokens, outcome.error = chunk["usage"]["completion_tokens"], ""
            outcome.latency_s, outcome.text = time.perf_counter() - start, "".join(pieces)
            if not done:
                outcome.error = "the stream ended without [DONE]"
            return outcome
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as error:
        return Outcome(0, f"{type(error).__name__}: {error}")


async def run_level(url: str, jobs: list[Job], clients: int) -> tuple[list[Outcome], float]:
    """`clients` concurrent clients work through `jobs` in order; (outcomes in job order, wall seconds)."""
    import aiohttp

    outcomes: list[Outcome | None] = [None] * len(jobs)
    pending = iter(enumerate(jobs))
    timeout = aiohttp.ClientTimeout(total=None, sock_read=900)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        async def client() -> None:
            for index, job in pending:
                outcomes[index] = await send(session, url, job)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return outcomes, time.perf_counter() - start


def baseline_app(hf_dir: Path, port: int, threads: int) -> None:
    """What a user would write around transformers: one `generate` at a time, streamed."""
    import threading

    import transformers
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    torch.set_num_threads(threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    lock = threading.Lock()
    app = FastAPI()

    def chunk(text: str, finish_reason: str | None = None, usage: dict | None = None) -> str:
        choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}] if usage is None else []
        body = {"id": "cmpl-hf", "object": "text_completion", "created": int(time.time()), "model": MODEL,
                "choices": choices, **({"usage": usage} if usage else {})}
        return f"data: {json.dumps(body)}\n\n"

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        inputs = tokenizer(body["prompt"], return_tensors="pt")
        max_tokens, temperature = body.get("max_tokens", 16), body.get("temperature", 1.0)
        streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        output = {}

        def generate() -> None:
            with lock, torch.no_grad():
                output["ids"] = model.generate(**inputs, streamer=streamer, max_new_tokens=max_tokens,
                                               do_sample=temperature > 0, temperature=temperature or None,
                                               pad_token_id=tokenizer.eos_token_id)

        thread = threading.Thread(target=generate)
        thread.start()

        def events():
            for text in streamer:
                if text:
                    yield chunk(text)
            thread.join()
            generated = output["ids"].shape[1] - inputs["input_ids"].shape[1]
            yield chunk("", "length" if generated == max_tokens else "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt_tokens = inputs["input_ids"].shape[1]
                yield chunk("", usage={"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                                       "total_tokens": prompt_tokens + generated})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class Server:
    """A server process on a free port, up once its /health answers; stopped on leaving."""

    def __init__(self, command: list[str], threads: int, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command, self.log = [*command, "--port", str(self.port)], log
        self.environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false"}

    def __enter__(self) -> Server:
        import urllib.request

        self.log_file = self.log.open("w")
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.log_file, env=self.environment)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5):
                    return self
            except OSError:
                time.sleep(0.5)
        self.process.kill()
        raise SystemExit(f"{' '.join(self.command)} did not come up:\n{self.log.read_text()[-4000:]}")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


def random_checkpoint(directory: Path, tokenizer_file: Path | None, texts: list[str], context_length: int) -> Path:
    """GPT-2 124M's shape with random weights, and GPT-2's tokenizer (else a BPE trained on `texts`)."""
    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import load_tokenizer, train_tokenizer

    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file else train_tokenizer(texts, vocab_size=8192, min_frequency=1)
    tokenizer.save(directory)
    config = dataclasses.replace(preset_config("gpt2"), vocab_size=tokenizer.vocab_size, context_length=context_length,
                                 name="bench-gpt2")
    torch.manual_seed(0)
    save_checkpoint(Transformer(config), directory, tokenizer=directory / "tokenizer.json")
    return directory


def short_prompts(texts: list[str], count: int) -> list[str]:
    """The first lines of `count` docstrings, a few to a couple of dozen words each."""
    lines = [text.splitlines()[0].strip() for text in texts]
    return [line for line in dict.fromkeys(lines) if 20 <= len(line) <= 120][:count]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else math.nan


def level_figures(outcomes: list[Outcome], wall: float, jobs: list[Job]) -> dict:
    good = [outcome for outcome, job in zip(outcomes, jobs) if job.kind == "good"]
    done = [outcome for outcome in good if outcome.ok]
    return {"requests": len(good), "requests_per_s": len(done) / wall, "tokens_per_s": sum(o.tokens for o in done) / wall,
            "tokens": sorted({o.tokens for o in done}), "failed": len(good) - len(done),
            "ttft": [o.first_token_s for o in done], "latency": [o.latency_s for o in done]}


def print_table(title: str, figures: dict[int, dict]) -> None:
    print(f"\n{title}\n{'clients':>7}{'requests':>10}{'req/s':>8}{'out tok/s':>11}{'tok/request':>13}"
          f"{'TTFT p50 s':>12}{'TTFT p99 s':>12}{'latency p50 s':>15}{'latency p99 s':>15}{'failed':>8}")
    for clients, level in figures.items():
        print(f"{clients:>7}{level['requests']:>10}{level['requests_per_s']:>8.2f}{level['tokens_per_s']:>11.1f}"
              f"{','.join(map(str, level['tokens'])) or '-':>13}{percentile(level['ttft'], 0.5):>12.2f}"
              f"{percentile(level['ttft'], 0.99):>12.2f}{percentile(level['latency'], 0.5):>15.2f}"
              f"{percentile(level['latency'], 0.99):>15.2f}{level['failed']:>8}")


def measure(server: Server, levels: list[int], jobs_at: dict[int, list[Job]], warmup: list[Job]) -> dict:
    """Each level's outcomes and wall seconds, after untimed warm-up requests."""
    asyncio.run(run_level(server.url, warmup, len(warmup)))
    results = {}
    for clients in levels:
        results[clients] = asyncio.run(run_level(server.url, jobs_at[clients], clients))
        figures = level_figures(*results[clients], jobs_at[clients])
        print(f"  {clients} clients: {figures['tokens_per_s']:.1f} output tokens/s, {figures['failed']} failed "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    return results


def report(levels: list[int], jobs_at: dict[int, list[Job]], ours: dict, theirs: dict, max_batch: int) -> None:
    """The tables, the ratio, the malformed requests' answers; exits non-zero on any failure."""
    plain_at = well_formed(jobs_at)
    ours_figures = {clients: level_figures(*ours[clients], jobs_at[clients]) for clients in levels}
    theirs_figures = {clients: level_figures(*theirs[clients], plain_at[clients]) for clients in levels}
    print_table(f"lmforge serve (continuous batching, {max_batch} slots)", ours_figures)
    print_table("transformers generate + FastAPI (one request at a time)", theirs_figures)

    hf_text = {job.prompt: outcome.text for clients in levels for job, outcome in zip(plain_at[clients], theirs[clients][0])}
    print(f"\n{'clients':>7}{'lmforge tok/s':>15}{'HF tok/s':>10}{'lmforge/HF':>12}{'same text as HF':>17}")
    for clients in levels:
        pairs = [(job, outcome) for job, outcome in zip(jobs_at[clients], ours[clients][0]) if job.kind == "good"]
        same = sum(outcome.text == hf_text[job.prompt] for job, outcome in pairs)
        rate, baseline = ours_figures[clients]["tokens_per_s"], theirs_figures[clients]["tokens_per_s"]
        print(f"{clients:>7}{rate:>15.1f}{baseline:>10.1f}{rate / baseline if baseline else math.nan:>11.2f}×{f'{same} of {len(pairs)}':>17}")
    if 8 in levels:
        ratio = ours_figures[8]["tokens_per_s"] / (theirs_figures[8]["tokens_per_s"] or math.nan)
        print(f"goal: ≥3× output tokens/s at 8 clients: {'met' if ratio >= 3 else 'NOT met'} ({ratio:.2f}×)")

    answers: dict[tuple[str, int], Counter] = {}
    for clients in levels:
        for job, outcome in zip(jobs_at[clients], ours[clients][0]):
            if job.kind != "good":
                answers.setdefault((job.kind, job.expected), Counter())[outcome.status] += 1
    if answers:
        print(f"\n{'malformed request (lmforge)':<26}{'expects':>9}{'sent':>6}  got")
        for (kind, expected), statuses in answers.items():
            print(f"{kind:<26}{expected:>9}{sum(statuses.values()):>6}  "
                  + ", ".join(f"{status} ×{count}" for status, count in sorted(statuses.items())))
    wrong = [kind for (kind, expected), statuses in answers.items() if set(statuses) != {expected}]
    failures = [f"{name} {clients} clients: {outcome.status} {outcome.error}"
                for name, results, jobs_of in (("lmforge", ours, jobs_at), ("transformers", theirs, plain_at))
                for clients in levels for job, outcome in zip(jobs_of[clients], results[clients][0])
                if job.kind == "good" and not outcome.ok]
    if wrong or failures:
        raise SystemExit(f"FAILED: {len(failures)} well-formed request(s) failed" + "".join(f"\n  {f}" for f in failures[:10])
                         + f"\nmalformed requests not answered with their 4xx: {', '.join(wrong) or 'none'}")
    print("\nevery well-formed request succeeded on both servers"
          + (f"; each of the {sum(sum(c.values()) for c in answers.values())} malformed ones got its 4xx" if answers else ""))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="an lmforge checkpoint (default: a random GPT-2-124M-shaped model)")
    parser.add_argument("--context-length", type=int, default=512, help="the random model's positions")
    parser.add_argument("--tokenizer", type=Path, help="the random model's tokenizer (default: GPT-2's gpt2.tiktoken from "
                        f"$LMFORGE_GPT2_ASSETS or {GPT2_ASSETS} if there, else a BPE trained on stdlib docs)")
    parser.add_argument("--concurrency", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="well-formed requests at each level")
    parser.add_argument("--serial-requests", type=int, default=4, help="well-formed requests at 1 client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, help="lmforge serve's --max_batch, its KV-cache slots (default: the most clients)")
    parser.add_argument("--malformed-every", type=int, default=8, help="one lmforge request in this many is malformed (0: none)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of each server")
    parser.add_argument("--quick", action="store_true", help="16 requests (2 at 1 client) of 32 tokens, clients 1,8")
    parser.add_argument("--baseline-app", type=Path, help=argparse.SUPPRESS)  # run the transformers server on this HF dir
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_app:
        baseline_app(args.baseline_app, args.port, args.threads)
        return
    if args.quick:
        args.requests, args.serial_requests, args.max_tokens, args.concurrency = 16, 2, 32, "1,8"
    if args.malformed_every == 1:
        parser.error("--malformed-every 1 leaves no well-formed request; give 2 or more, or 0 for none")
    levels = [int(clients) for clients in args.concurrency.split(",")]
    args.max_batch = args.max_batch or max(levels)

    import aiohttp
    import transformers

    from lmforge.interop.hf import to_hf
    from lmforge.model.accounting import model_cost
    from lmforge.model.checkpoint_directory import read_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import stdlib_documents  # the tests' real English prose, shipped with Python

    tokenizer_file = args.tokenizer or next((path for path in [GPT2_ASSETS / "gpt2.tiktoken"] if path.is_file()), None)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        texts = stdlib_documents()
        checkpoint = args.checkpoint or random_checkpoint(root / "model", tokenizer_file, texts, args.context_length)
        to_hf(checkpoint, root / "hf")
        config = read_config(checkpoint)
        prompts = short_prompts(texts, max(args.requests, args.serial_requests))
        malformed = malformed_jobs(config.context_length, config.vocab_size)
        jobs_at, sent = {}, 0
        for clients in levels:
            count = args.serial_requests if clients == 1 else args.requests
            jobs_at[clients] = workload(prompts, count, args.max_tokens, malformed, args.malformed_every, sent)
            sent += sum(job.kind != "good" for job in jobs_at[clients])
        plain_at = well_formed(jobs_at)
        warmup = workload(prompts, 2, 8, malformed, 0, 0)

        model_name = args.checkpoint or f"random GPT-2-124M-shaped model ({tokenizer_file.name if tokenizer_file else 'BPE'} tokenizer)"
        print(f"{cpu_name()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, aiohttp {aiohttp.__version__}; {args.threads} torch threads a server, "
              f"load average {os.getloadavg()[0]:.1f} at start\n"
              f"{model_name}: {model_cost(config).parameters / 1e6:.1f}M parameters, {config.n_layers} layers, d_model "
              f"{config.d_model}, vocab {config.vocab_size:,}, {config.context_length} positions; fp32\n"
              f"streaming /v1/completions, greedy, max_tokens {args.max_tokens}; clients {args.concurrency}; "
              f"{args.requests} requests a level ({args.serial_requests} at 1 client); lmforge --max_batch {args.max_batch}; "
              f"malformed: " + (f"1 in {args.malformed_every} of lmforge's requests" if args.malformed_every else "none"),
              flush=True)

        lmforge_command = [sys.executable, "-m", "lmforge", "serve", str(checkpoint), "--max_batch", str(args.max_batch),
                           "--precision", "fp32", "--device", "cpu", "--api_key", API_KEY, "--model_name", MODEL]
        print("lmforge serve", flush=True)
        with Server(lmforge_command, args.threads, root / "lmforge.log") as server:
            ours = measure(server, levels, jobs_at, warmup)
        baseline_command = [sys.executable, __file__, "--baseline-app", str(root / "hf"), "--threads", str(args.threads)]
        print("transformers generate + FastAPI", flush=True)
        with Server(baseline_command, args.threads, root / "hf.log") as server:
            theirs = measure(server, levels, plain_at, warmup)

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    report(levels, jobs_at, ours, theirs, args.max_batch)


if __name__ == "__main__":
    main()
