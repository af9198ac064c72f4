"""synth's request phase against an OpenAI-compatible server on loopback with a fixed latency.

    python benchmarks/synth_speed.py [--latency 0.2] [--contexts 160] [--sequential-contexts 30]

Runs `tenfold synth --generator openai` as a user would (a fresh process), twice in one run:
sequential (--concurrency 1) and at the default concurrency, one request per context (multi_detail).
Records/s of the request phase = records / (last answer - first request), seen by the server; the
ratio of the two is the speed-up. Start-up = process launch to the first request the server sees.
Appends a table to BENCHMARKS.md and the raw rows to benchmarks/results/synth_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fake server the tests use: one fake, kept in one place
from fake_openai import FakeServer  # noqa: E402


def write_corpus(root: Path, n: int) -> Path:
    from tenfold.toy import toy_records

    root.mkdir(parents=True)
    chats = [r for r in toy_records(3 * n, seed=11, min_lines=60, max_lines=80) if "conversations" in r][:n]
    assert len(chats) == n, f"the toy world gave {len(chats)} documents, {n} asked for"
    for i, record in enumerate(chats):
        (root / f"doc{i}.txt").write_text(record["conversations"][0]["content"].rsplit("\n\n", 1)[0])
    return root


def run_synth(corpus: Path, output: Path, latency: float, contexts: int, concurrency: int | None) -> dict:
    server = FakeServer(latency=latency)  # chat completions that take `latency` seconds
    argv = [sys.executable, "-m", "tenfold.cli", "synth", "--corpus", str(corpus), "--output", str(output),
            "--generator", "openai", "--model", "bench", "--base-url", server.url, "--tasks", "multi_detail",
            "--min-tokens", "400", "--max-tokens", "3000", "--tokenizer", "tenfold/tiny-llama",
            "--max-contexts", str(contexts)] + (["--concurrency", str(concurrency)] if concurrency else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OPENAI_API_KEY="sk-bench")
    launched = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    finally:
        server.close()
    if done.returncode:
        raise SystemExit(f"synth failed ({done.returncode}): {done.stderr[-2000:]}")
    records = sum(1 for _ in open(output))
    phase = server.last_answer - server.first_request
    return {"concurrency": concurrency or "default", "records": records, "requests": sum(server.answered.values()),
            "request_phase_s": round(phase, 3), "records_per_s": round(records / phase, 2),
            "startup_s": round(server.first_request - launched, 3),
            "total_s": round(time.monotonic() - launched, 3)}


def record(rows: list[dict], latency: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} threads"
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "synth_speed.json").write_text(json.dumps(
        {"date": stamp, "commit": commit, "latency_s": latency, "rows": rows}, indent=2))
    sequential, default = rows
    lines = [f"\n## synth_speed ({stamp}, commit {commit}{'+dirty' if dirty else ''})\n",
             f"Machine: {machine}; loopback server, {latency * 1000:.0f} ms per request, one request per record\n",
             "| client | records | request phase s | records/s | start-up s (launch to first request) |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| concurrency {row['concurrency']} | {row['records']} | {row['request_phase_s']} | "
                     f"{row['records_per_s']} | {row['startup_s']} |")
    lines.append(f"\n- default concurrency / sequential: "
                 f"{default['records_per_s'] / sequential['records_per_s']:.1f}x records/s (goal >= 10x); "
                 f"start-up {default['startup_s']:.2f} s and {sequential['startup_s']:.2f} s (goal < 3 s)\n")
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--contexts", type=int, default=160, help="records at the default concurrency")
    parser.add_argument("--sequential-contexts", type=int, default=30, help="records of the sequential client")
    parser.add_argument("--no-record", action="store_true", help="print only; BENCHMARKS.md untouched")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", args.contexts)
        rows = [run_synth(corpus, Path(tmp) / "sequential.jsonl", args.latency, args.sequential_contexts, 1),
                run_synth(corpus, Path(tmp) / "default.jsonl", args.latency, args.contexts, None)]
    if args.no_record:
        print(json.dumps(rows, indent=2))
    else:
        record(rows, args.latency)


if __name__ == "__main__":
    main()
