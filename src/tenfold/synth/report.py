"""The end of a synth run: OUTPUT.summary.json and a histogram of record lengths (OUTPUT.lengths.png)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from tenfold.io import read_jsonl, write_atomic
from tenfold.records import record_tokens


def plot_lengths(lengths: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(lengths, bins=min(40, max(1, len(set(lengths)))), color="#4477aa")
    axes.set_xlabel("tokens per record (target model, chat template included)")
    axes.set_ylabel("records")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(output: Path, settings, generator, tokenizer, skipped: Counter, rejected: Counter, stats: Counter,
                 records_by_task: Counter) -> dict:
    lengths, tasks_in_output = [], Counter()
    for record in read_jsonl(output):
        lengths.append(record_tokens(record, tokenizer))
        tasks_in_output[record["task"]] += 1
    tally = dataclasses.asdict(generator.tally)
    tally.pop("in_flight")
    cost = (tally["prompt_tokens"] * settings.price_input_per_million
            + tally["completion_tokens"] * settings.price_output_per_million) / 1e6
    summary = {
        "output": str(output),
        "generator": {"backend": generator.backend, "model": generator.model},
        "tokenizer": settings.tokenizer,
        "records_written": dict(records_by_task),  # by this run
        "records_in_output": dict(tasks_in_output),  # by every run so far
        "contexts_already_done": stats["already_done"],
        "contexts_without_record": stats["contexts_without_record"],
        "documents_skipped": dict(skipped),
        "rejected": dict(rejected),
        "requests": tally | {"cached_replies": stats["cached_replies"], "cost": round(cost, 6)},
        "limits": generator.limiter.summary() if hasattr(generator, "limiter") else None,  # openai only
        "record_tokens": {"min": min(lengths, default=0), "max": max(lengths, default=0),
                          "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0, "total": sum(lengths)},
        "histogram": str(output) + ".lengths.png",
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()},
    }
    write_atomic(Path(str(output) + ".summary.json"), json.dumps(summary, indent=2), "--output")
    plot_lengths(lengths, Path(summary["histogram"]), f"{sum(tasks_in_output.values())} records in {output.name}")
    return summary
