"""Regenerate tests/fixtures/longbench_official_scores.json: LongBench's own eval.py on tenfold's test predictions.

    python scripts/longbench_parity_fixture.py /path/to/THUDM-LongBench [--python /path/to/python]

The first argument is a checkout of https://github.com/THUDM/LongBench (its LongBench/ folder holds
eval.py and metrics.py). The python given (default: this one) must have what LongBench's
requirements.txt installs for scoring, and nothing more: `pip install rouge==1.0.1 jieba==0.42.1
fuzzywuzzy==0.18.0 numpy` and NOT python-Levenshtein (with it fuzzywuzzy scores code differently).

`build_cases()` is the set of predictions the parity test scores (tests/eval/test_longbench.py imports it
from here): every metric, Chinese included, and the edge cases (empty, multi-line, unicode, long
inputs around the `rouge` recursion limit, the classification quirk). The script copies eval.py and
metrics.py into a temporary folder, writes the cases as eval.py's pred/<model>/<dataset>.jsonl
files, runs `python eval.py --model ...` (and `--e`) there as a subprocess, exactly as a LongBench
user does, and stores its result.json values: per case (one model folder per case index), per
dataset (all cases of a dataset in one file) and per LongBench-E bucket. Nothing of LongBench's code
is stored; the fixture holds numbers and a hash of the cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "longbench_official_scores.json"

WORDS = ["the", "a", "an", "cat", "dog", "Paris", "river", "bank", "said", "went", "to", "of", "and", "in", "is",
         "was", "John", "Mary", "1984", "42", "report", "committee", "budget", "meeting", "résumé", "naïve",
         "Zürich", "—", "it's", "U.S.", "e.g.", "(see", "below)", "\"quoted\"", "data,", "end.", "THE", "An"]
ZH_WORDS = ["我们", "今天", "讨论", "财经", "新闻", "北京", "大学", "的", "了", "，", "。", "会议", "决定", "预算",
            "模型", "长文本", "问题", "答案", "是", "在", "上海", "２０２３年", "“引号”", "ABC", "测试"]
CODE_LINES = ["for (int i = 0; i < n; i++) {", "for (int j = n; j > 0; j--) {", "    return self.value",
              "x = foo(bar, baz)", "if (a == b) return;", "def forward(self, x):", "    # a comment", "// note",
              "```python", "print('héllo wörld')", "result.append(item)", "}", ""]


def _phrase(rng: random.Random, words: list[str], low: int, high: int, sep: str = " ") -> str:
    return sep.join(rng.choice(words) for _ in range(rng.randint(low, high)))


def build_cases() -> list[dict]:
    """Deterministic cases: {"dataset", "pred", "answers", "all_classes", "length"}."""
    rng = random.Random(20240430)
    cases = []

    def add(dataset, pred, answers, all_classes=None, length=None):
        cases.append({"dataset": dataset, "pred": pred, "answers": answers, "all_classes": all_classes,
                      "length": length if length is not None
                      else rng.choice([120, 3999, 4000, 5000, 7999, 8000, 20000])})

    # English token F1 (7 datasets share it; triviaqa adds the first-line rule)
    qa = [("Paris", ["Paris"]), ("The Paris.", ["paris"]), ("in Paris, France", ["Paris", "France"]),
          ("", ["Paris"]), ("the a an", ["Paris"]), ("an", ["the"]), ("\n\nParis\nLondon", ["Paris"]),
          ("London\nParis", ["Paris"]), ("Zürich naïve résumé", ["zurich", "Zürich naïve"]), ("42 42 42", ["42"]),
          ("John and Mary went to the bank.", ["Mary went to the river bank", "John"]), ("—", ["—"]),
          (" ".join(["Paris"] * 3000), ["Paris is a city"]), ("U.S. budget", ["US budget"])]
    qa_sets = ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "triviaqa"]
    for i, (pred, answers) in enumerate(qa):
        add(qa_sets[i % len(qa_sets)], pred, answers)
        add("triviaqa", pred, answers)
    for _ in range(12):
        add(rng.choice(qa_sets), _phrase(rng, WORDS, 0, 12),
            [_phrase(rng, WORDS, 1, 6) for _ in range(rng.randint(1, 3))])

    # Chinese token F1 (jieba)
    zh_qa = [("北京大学", ["北京大学"]), ("在北京，大学。", ["北京大学"]), ("", ["北京"]), ("，。！", ["北京"]),
             ("ABC 测试 abc", ["abc测试"]), ("我们今天讨论了财经新闻", ["今天讨论财经新闻", "会议"])]
    for pred, answers in zh_qa:
        add("multifieldqa_zh", pred, answers)
    for _ in range(6):
        add("multifieldqa_zh", _phrase(rng, ZH_WORDS, 0, 15, ""), [_phrase(rng, ZH_WORDS, 1, 8, "")])

    # ROUGE-L (pltrdy `rouge`): sentences on ".", errors score 0
    def long_words(n, tag):
        return " ".join(f"{tag}{i}" for i in range(n))

    rouge_cases = [("The committee approved the budget.", ["The committee approved the budget."]),
                   ("committee approved budget. It met in Paris.", ["The committee met. It approved the budget."]),
                   ("", ["The budget."]), ("...", ["The budget."]), (" ", ["The budget."]), ("budget", [" . "]),
                   ("Zürich naïve. résumé", ["naïve résumé Zürich"]), ("a b c d e f", ["f e d c b a", "a c e"]),
                   ("line one\nline two. line three", ["line two line three"]),
                   ("\n\nsummary first line\nsecond line", ["summary first line"]),
                   ("e.g. U.S. it's \"quoted\" (see below)", ["quoted see below"])]
    for i, (pred, answers) in enumerate(rouge_cases):
        add(["gov_report", "qmsum", "multi_news"][i % 3], pred, answers)
        add("samsum", pred, answers)
    for n in (985, 989, 990, 991, 992, 1200):  # around the recursion limit of `rouge`'s LCS reconstruction
        add("gov_report", long_words(n, "w"), ["alpha beta w3"])
        add("qmsum", long_words(n, "w") + ". w7 w8", ["w7 w8 gamma"])
    add("multi_news", ". ".join(long_words(400, f"s{k}_") for k in range(3)), ["s0_1 s1_2 s2_3"])
    for _ in range(10):
        add(rng.choice(["gov_report", "qmsum", "multi_news", "samsum"]), _phrase(rng, WORDS, 0, 40),
            [_phrase(rng, WORDS, 1, 30) for _ in range(rng.randint(1, 2))])

    # Chinese ROUGE-L (jieba words joined by spaces)
    zh_rouge = [("我们今天讨论了财经新闻。", ["今天我们讨论财经新闻。"]), ("", ["会议"]), ("。。。", ["会议"]),
                ("会议决定预算", ["会议决定了预算", "预算"])]
    for i, (pred, answers) in enumerate(zh_rouge):
        add(["dureader", "vcsum"][i % 2], pred, answers)
    for n in (988, 989, 990, 991):
        add("vcsum", long_words(n, "词"), ["alpha beta 词3"])
    for _ in range(6):
        add(rng.choice(["dureader", "vcsum"]), _phrase(rng, ZH_WORDS, 1, 60, ""), [_phrase(rng, ZH_WORDS, 1, 40, "")])

    # classification (first-line rule; the remove-while-iterating quirk)
    trec_classes = ["Abbreviation", "Entity", "Description", "Human", "Location", "Numeric value",
                    "Description and abstract concept", "Human being", "Number"]
    for pred, gt in [("Location", "Location"), ("Human being", "Human being"), ("Human being", "Human"),
                     ("Type: Numeric value, Number", "Number"), ("\nEntity\nLocation", "Location"),
                     ("\nEntity\nLocation", "Entity"), ("", "Entity"), ("nothing", "Entity"),
                     ("Description and abstract concept", "Description and abstract concept"),
                     ("Description and abstract concept", "Description")]:
        add("trec", pred, [gt], trec_classes)
    lsht_classes = ["财经", "新闻", "财经新闻", "体育", "教育"]
    for pred, gt in [("财经新闻", "财经新闻"), ("财经", "财经"), ("体育\n财经", "体育"), ("教育和体育", "教育"),
                     ("", "财经"), ("新闻财经", "财经新闻")]:
        add("lsht", pred, [gt], lsht_classes)

    # retrieval and count
    for pred, gt in [("Paragraph 3", "Paragraph 3"), ("Paragraph 3 and Paragraph 13", "Paragraph 3"),
                     ("The answer is Paragraph 30", "Paragraph 3"), ("none", "Paragraph 3"), ("", "Paragraph 7"),
                     ("3, 3, 4", "Paragraph 3"), ("Paragraph ３", "Paragraph 3")]:
        add("passage_retrieval_en", pred, [gt])
    for pred, gt in [("段落3", "段落3"), ("答案是段落12和段落3", "段落3"), ("无", "段落1")]:
        add("passage_retrieval_zh", pred, [gt])
    for pred, gt in [("5", "5"), ("There are 5 unique paragraphs; 5.", "5"), ("12 or 5", "5"), ("five", 5),
                     ("", "3"), ("05", "5")]:
        add("passage_count", pred, [gt])

    # code edit similarity (first line without ` # //; fuzzywuzzy over difflib)
    code = [("for (int i = 0; i < n; i++) {", "for (int j = n; j > 0; j--) {"),
            ("x = foo(bar, baz)", "x = foo(bar, baz)"), ("\n\n    return self.value\nmore", "return self.value"),
            ("# comment\nresult.append(item)", "result.append(item)"),
            ("```python\nprint('héllo wörld')", "print('hello world')"), ("// note\n# c\n`x`", "x = 1"), ("", "x = 1"),
            ("x = 1", ""), ("", ""), ("}", "}"),
            ("y = " + "+".join(f"a{i}" for i in range(80)), "y = " + "+".join(f"a{i}" for i in range(0, 80, 2)))]
    for i, (pred, gt) in enumerate(code):
        add(["lcc", "repobench-p"][i % 2], pred, [gt])
    for _ in range(10):
        pred = "\n".join(rng.choice(CODE_LINES) for _ in range(rng.randint(0, 3)))
        add(rng.choice(["lcc", "repobench-p"]), pred, [rng.choice(CODE_LINES) for _ in range(rng.randint(1, 2))])

    for case in cases:  # eval.py reads all_classes from the file; non-classification datasets carry null
        if case["dataset"] not in ("trec", "lsht"):
            case["all_classes"] = None
    return cases


def cases_hash(cases: list[dict]) -> str:
    return hashlib.sha256(json.dumps(cases, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _write_preds(folder: Path, by_dataset: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True)
    for dataset, rows in by_dataset.items():
        with open(folder / f"{dataset}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"pred": row["pred"], "answers": row["answers"], "all_classes": row["all_classes"],
                                    "length": row["length"]}, ensure_ascii=False) + "\n")


def _nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def run_official(longbench: Path, python: str) -> dict:
    cases = build_cases()
    by_dataset, index_of = defaultdict(list), defaultdict(list)
    for i, case in enumerate(cases):
        by_dataset[case["dataset"]].append(case)
        index_of[case["dataset"]].append(i)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("eval.py", "metrics.py"):
            shutil.copy(longbench / "LongBench" / name, work / name)
        depth = max(len(rows) for rows in by_dataset.values())
        for k in range(depth):
            _write_preds(work / "pred" / f"case{k}", {d: [rows[k]] for d, rows in by_dataset.items() if k < len(rows)})
        _write_preds(work / "pred" / "all", by_dataset)
        _write_preds(work / "pred_e" / "all", by_dataset)

        def evaluate(model: str, e: bool = False) -> dict:
            subprocess.run([python, "eval.py", "--model", model] + (["--e"] if e else []), cwd=work, check=True,
                           capture_output=True)
            return json.loads((work / ("pred_e" if e else "pred") / model / "result.json").read_text())

        per_case = [None] * len(cases)
        for k in range(depth):
            result = evaluate(f"case{k}")
            for dataset, rows in by_dataset.items():
                if k < len(rows):
                    per_case[index_of[dataset][k]] = result[dataset]
        return {"cases_sha256": cases_hash(cases), "per_case": per_case, "per_dataset": evaluate("all"),
                "per_dataset_e": {d: {b: _nan_to_none(v) for b, v in s.items()}
                                  for d, s in evaluate("all", e=True).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("longbench", type=Path, help="a checkout of THUDM/LongBench")
    parser.add_argument("--python", default=sys.executable, help="interpreter with rouge, jieba, fuzzywuzzy, numpy")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    check = subprocess.run([args.python, "-c", "import Levenshtein"], capture_output=True)
    if check.returncode == 0:
        sys.exit(f"{args.python} has python-Levenshtein, which LongBench's requirements do not install; "
                 f"use an environment without it")
    versions = subprocess.run([args.python, "-c", "import importlib.metadata as m, sys; print(sys.version.split()[0], "
                               "*[m.version(p) for p in ('rouge', 'jieba', 'fuzzywuzzy', 'numpy')])"],
                              capture_output=True, text=True, check=True).stdout.split()
    commit = subprocess.run(["git", "-C", str(args.longbench), "rev-parse", "HEAD"], capture_output=True, text=True)
    fixture = {"note": "LongBench's eval.py run on scripts/longbench_parity_fixture.py:build_cases(); regenerate "
                       "with that script. per_case[i]: eval.py's score for cases[i] alone.",
               "longbench_commit": commit.stdout.strip() or "unknown",
               "environment": dict(zip(("python", "rouge", "jieba", "fuzzywuzzy", "numpy"), versions)),
               **run_official(args.longbench, args.python)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {len(fixture['per_case'])} cases, {len(fixture['per_dataset'])} datasets")


if __name__ == "__main__":
    main()
