"""report.json and the table `prepare` prints: per step, documents and characters in, kept and
dropped by reason; the mixture achieved next to the one asked for; tokens per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.data.mix import MixPlan
from lmforge.data.step import StepStats
from lmforge.data.step_order import in_step_order

REPORT_FORMAT = "lmforge.prepare.report.v1"


def build_report(
    stats: dict[str, StepStats], plan: MixPlan, manifest: dict, excluded: dict[str, str], *, fingerprint: str, recipe: dict
) -> dict[str, Any]:
    steps = []
    per_source: dict[str, int] = {}
    for name in in_step_order(stats):
        step = stats[name]
        counters = {key: value for key, value in step.counters.items() if ":" not in key}
        per_source.update({key: value for key, value in step.counters.items() if ":" in key})
        steps.append({
            "step": name,
            "documents_in": step.documents_in,
            "documents_kept": step.documents_kept,
            "documents_dropped": sum(entry["documents"] for entry in step.dropped.values()),
            "characters_in": step.characters_in,
            "characters_kept": step.characters_kept,
            "dropped": dict(sorted(step.dropped.items(), key=lambda item: -item[1]["documents"])),
            **({"counters": counters} if counters else {}),
        })
    train_characters = {name: per_source.get(f"train_characters:{name}", 0) for name in plan.epochs}
    train_tokens = {name: per_source.get(f"train_tokens:{name}", 0) for name in plan.epochs}
    total_characters, total_tokens = sum(train_characters.values()) or 1, sum(train_tokens.values()) or 1
    mixture = {
        name: {
            "epochs": round(plan.epochs[name], 4),
            "available_characters": plan.available[name],
            "asked_share": round(plan.asked[name], 4),
            "achieved_share_characters": round(train_characters[name] / total_characters, 4),
            "achieved_share_tokens": round(train_tokens[name] / total_tokens, 4),
            "train_characters": train_characters[name],
            "train_tokens": train_tokens[name],
        }
        for name in plan.epochs
    }
    warnings = [warning for name in in_step_order(stats) for warning in stats[name].warnings]
    warnings += [
        f"source {name!r} has no documents left after filtering and deduplication; its share of the mixture cannot be met"
        for name in plan.epochs
        if plan.available[name] == 0 and plan.asked[name] > 0
    ]
    splits = {
        split: {"tokens": entry["tokens"], "documents": entry["documents"], "shards": len(entry["shards"])}
        for split, entry in manifest["splits"].items()
    }
    return {
        "format": REPORT_FORMAT,
        "fingerprint": fingerprint,
        "steps": steps,
        "mixture": mixture,
        "splits": splits,
        "excluded": excluded,
        "warnings": warnings,
        "recipe": recipe,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as fixed-width tables for a terminal."""
    lines = [f"{'step':<14}{'docs in':>12}{'kept':>12}{'dropped':>10}{'chars in':>14}{'chars kept':>14}  top reasons dropped"]
    for step in report["steps"]:
        reasons = ", ".join(f"{reason} {entry['documents']:,}" for reason, entry in list(step["dropped"].items())[:3])
        lines.append(
            f"{step['step']:<14}{step['documents_in']:>12,}{step['documents_kept']:>12,}{step['documents_dropped']:>10,}"
            f"{step['characters_in']:>14,}{step['characters_kept']:>14,}  {reasons}"
        )
    lines += ["", f"{'source':<20}{'epochs':>8}{'asked':>9}{'achieved (chars)':>18}{'achieved (tokens)':>19}"]
    for name, entry in report["mixture"].items():
        lines.append(
            f"{name:<20}{entry['epochs']:>8.2f}{entry['asked_share']:>9.1%}{entry['achieved_share_characters']:>18.1%}"
            f"{entry['achieved_share_tokens']:>19.1%}"
        )
    lines.append("")
    for split, entry in report["splits"].items():
        lines.append(f"{split}: {entry['tokens']:,} tokens, {entry['documents']:,} documents, {entry['shards']} shard(s)")
    lines += [f"warning: {warning}" for warning in report["warnings"]]
    return "\n".join(lines)


def nothing_left(stats: dict[str, StepStats], inputs: list[str], excluded: Path) -> str:
    """Why a run has no document to tokenize, in one line: what was read, what dropped it, what to do."""
    read = stats.get("read", StepStats())
    if read.documents_in == 0:
        return f"no documents to prepare: the inputs ({', '.join(inputs)}) hold no text"
    steps = [name for name in in_step_order(stats) if stats[name].dropped]
    drops = []
    for name in steps:
        reasons = sorted(stats[name].dropped.items(), key=lambda item: -item[1]["documents"])
        total = sum(entry["documents"] for _, entry in reasons)
        drops.append(f"{name} dropped {total:,} (" + ", ".join(f"{reason} {entry['documents']:,}" for reason, entry in reasons[:3]) + ")")
    if steps == ["read"]:
        advice = "every line or file was bad: run without --on-bad-line skip to see the first"
    else:
        advice = "loosen those rules (`lmforge prepare --help` lists them) or check --read.unit and --read.text_field"
    return f"no documents survived the filters: {read.documents_in:,} read, {'; '.join(drops)}; {advice} (the dropped documents are in {excluded}/)"
