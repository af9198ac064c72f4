import json

import pytest

from tenfold.cli import main
from tenfold.io import write_jsonl
from tenfold.mix import DEFAULT_COUNTS, parse_counts
from tenfold.models import load_tokenizer
from tenfold.toy import toy_records
from tenfold.train.loop import train


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    synthetic = [dict(r, task="single_detail") for r in toy_records(16, seed=9, min_lines=4, max_lines=12)
                 if "conversations" in r]
    write_jsonl(synthetic, root / "synth.jsonl")
    alpaca = [{"instruction": f"Read the paper and answer question {i}.",
               "input": "" if i % 2 else f"Paper {i}: the owl is grey .",
               "output": f"Answer {i}.", "file": f"paper{i}.txt"} for i in range(10)]
    write_jsonl(alpaca, root / "LongAlpaca.jsonl")
    with open(root / "LongAlpaca.jsonl", "a") as f:
        f.write('{"instruction": "cut off\n')  # a truncated line
    (root / "alpaca_extra.json").write_text(json.dumps(alpaca[:2]))  # LongAlpaca ships a JSON array
    plain = [{"text": "\n".join(r["text"].splitlines() * 3), "meta": {"n": i}}
             for i, r in enumerate(toy_records(20, seed=4, min_lines=20, max_lines=40)) if "text" in r]
    write_jsonl(plain, root / "redpajama.jsonl")
    return root, synthetic, alpaca, plain


def run_mix(root, output, seed=1, counts="instruct=6,plain=0.5"):
    main(["mix", "--output", str(output), "--synthetic", str(root / "synth.jsonl"),
          "--instruct", str(root / "LongAlpaca.jsonl"), str(root / "alpaca_extra.json"),
          "--plain", str(root / "redpajama.jsonl"), "--counts", counts, "--seed", str(seed), "--max-length", "64",
          "--tokenizer", "tenfold/tiny-llama"])
    return [json.loads(line) for line in open(output)]


def test_mix_counts_converts_cuts_and_reports_each_source(sources, tmp_path):
    root, synthetic, alpaca, plain = sources
    records = run_mix(root, tmp_path / "train.jsonl")
    by_task = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
        assert record["source"]
    assert len(by_task["single_detail"]) == len(synthetic)  # all synthetic
    assert len(by_task["plain"]) == round(0.5 * len(plain))
    instruct = by_task["instruct"]
    assert len(instruct) <= 6  # 6 drawn; a drawn truncated line is skipped and counted
    originals = {a["output"]: a for a in alpaca}
    for record in instruct:
        user, assistant = record["conversations"]
        source = originals[assistant["content"]]
        expected = source["instruction"] + (f"\n\n{source['input']}" if source["input"] else "")
        assert user == {"role": "user", "content": expected} and record["meta"]["file"] == source["file"]
    tokenizer = load_tokenizer("tenfold/tiny-llama")
    originals = [p["text"] for p in plain]
    for record in by_task["plain"]:
        assert len(tokenizer(record["text"], add_special_tokens=False)["input_ids"]) <= 64
        assert any(text.startswith(record["text"]) and len(text) > len(record["text"]) for text in originals)
    summary = json.loads((tmp_path / "train.jsonl.summary.json").read_text())
    assert summary["records"] == len(records)
    for kind, task in [("synthetic", "single_detail"), ("instruct", "instruct"), ("plain", "plain")]:
        stats = summary["sources"][kind]
        assert stats["records"] == len(by_task[task])
        assert stats["tokens"] > 0
    assert summary["sources"]["instruct"]["records"] + summary["sources"]["instruct"]["skipped"] == 6
    assert summary["sources"]["instruct"]["available"] == 13
    assert summary["sources"]["synthetic"]["by_source"] == {"toy": len(synthetic)}


def test_mix_is_shuffled_and_seeded(sources, tmp_path):
    root = sources[0]
    first = run_mix(root, tmp_path / "a.jsonl", seed=3, counts="instruct=all,plain=all")
    again = run_mix(root, tmp_path / "b.jsonl", seed=3, counts="instruct=all,plain=all")
    other = run_mix(root, tmp_path / "c.jsonl", seed=4, counts="instruct=all,plain=all")
    assert first == again
    assert sorted(map(json.dumps, first)) == sorted(map(json.dumps, other)) and first != other
    tasks = [r["task"] for r in first]
    assert tasks != sorted(tasks, key=["single_detail", "instruct", "plain"].index)  # interleaved, not concatenated


def test_counts_default_to_the_paper_and_bad_counts_are_refused():
    assert parse_counts(None) == DEFAULT_COUNTS == {"synthetic": "all", "instruct": 12000, "plain": 5000}
    assert parse_counts("plain=0.25,instruct=10") == {"synthetic": "all", "instruct": 10, "plain": 0.25}
    with pytest.raises(ValueError, match="unknown source 'books'"):
        parse_counts("books=3")
    with pytest.raises(ValueError, match="a fraction"):
        parse_counts("plain=lots")


def test_tenfold_train_accepts_the_mixed_file(sources, tmp_path, tiny_recipe):
    root = sources[0]
    mixed = run_mix(root, tmp_path / "train.jsonl", counts="instruct=4,plain=4")
    summary = train(tiny_recipe(**{"data.train_files": [str(tmp_path / "train.jsonl")], "train.max_steps": 2}))
    assert summary["steps"] == 2 and summary["data"]["skipped"] == {}
    assert summary["data"]["records"] == summary["data"]["used"] == len(mixed) and summary["tokens_seen"] > 0
