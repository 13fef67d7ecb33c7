"""Data-parallel scaling: training tokens/s of `lmforge pretrain` on one process, and under
torchrun on two processes with DDP (`--parallel.dp_replicate 2`) and FSDP2 (`--parallel.dp_shard 2`).

    python benchmarks/distributed.py                       # a small Llama-style model, CPU, gloo
    python benchmarks/distributed.py --layers 8 --d-model 512 --processes 4

Each process gets `--threads` intra-op threads, and the same micro-batch (weak scaling: two
processes train on a global batch twice as large), so the ideal ratio is the number of
processes. One process with all of their threads is timed too — the fair baseline on a machine
whose cores the processes share. The data is the tests' prepared corpus (Python documentation).
On GPUs the same command runs with NCCL; MFU is in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_prepared_data


def tokens_per_second(run: Path, warmup: int = 3) -> float:
    """Median global tokens/s of the steps after `warmup`: robust to a step slowed by other work."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median([r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][warmup:])


def pretrain(processes: int, threads: int, parallel: list[str], model: Path, data: Path, out: Path, args) -> float:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    argv = [sys.executable, *launcher, "-m", "lmforge", "pretrain", "--model", str(model), "--data", str(data),
            "--out", str(out), "--train.steps", str(args.steps), "--train.micro_batch_size", str(args.batch),
            "--train.context_length", str(args.context), "--train.precision", args.precision, "--train.log_every", "1",
            "--train.eval_every", "0", "--train.eval_batches", "1", "--train.sample_tokens", "0",
            "--train.save_every", str(args.steps), "--train.peak_flops", "1e12", *parallel]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return tokens_per_second(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="micro-batch per process")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        data = build_prepared_data(root / "data", vocab_size=2048)
        model = root / "model.json"
        model.write_text(json.dumps({"preset": "small", "n_layers": args.layers, "d_model": args.d_model,
                                     "n_heads": args.heads, "n_kv_heads": args.heads // 2, "d_ff": int(args.d_model * 8 / 3) // 8 * 8,
                                     "context_length": args.context}))
        n = args.processes
        print(f"model: {args.layers} layers, d_model {args.d_model}; micro-batch {args.batch} × {args.context} tokens a "
              f"process; {args.precision}; {os.cpu_count()} CPU cores; gloo")
        one = pretrain(1, args.threads, [], model, data, root / "one", args)
        all_threads = pretrain(1, args.threads * n, [], model, data, root / "all-threads", args)
        rows = [(f"1 process × {args.threads} thread(s)", one), (f"1 process × {args.threads * n} threads", all_threads)]
        for name, option in (("DDP", "--parallel.dp_replicate"), ("FSDP2", "--parallel.dp_shard")):
            rate = pretrain(n, args.threads, [option, str(n)], model, data, root / name, args)
            rows.append((f"{name} {n} processes × {args.threads} thread(s)", rate))
        print(f"{'layout':<36} {'tokens/s':>10} {'vs 1 process':>13} {'vs all threads':>15}")
        for name, rate in rows:
            print(f"{name:<36} {rate:>10,.0f} {rate / one:>12.2f}× {rate / all_threads:>14.2f}×")


if __name__ == "__main__":
    main()
