"""Regenerate tests/fixtures/needle_paper_parity.json: the paper's own eval_needle.py building needle prompts.

    python scripts/needle_parity_fixture.py /path/to/FlagEmbedding

The argument is a checkout of https://github.com/FlagOpen/FlagEmbedding (its
research/Long_LLM/longllm_qlora, or Long_LLM/longllm_qlora at the paper's commit 9f7dcd2, holds
main/eval_needle.py). Nothing of its code is stored; the fixture holds token ids, scores and hashes.

What runs is the reference's real `main()`, up to the point where it has built every prompt: its argument
parsing, its haystack reading (a file whole and stripped, or a directory's *.txt files in `glob` order
until their token count passes the longest length), its `generate_sample` (repeat, head cut, needle at
the token offset, one decode) and its llama-3 chat template (src/chat.py). What it needs and cannot have
offline is stubbed: the model loader returns no model and tenfold's shipped tiny tokenizer
(tenfold/tiny-llama), Accelerator is a stand-in, and `datasets.Dataset.from_list` stops the run and hands
back the prompts instead of starting generation. Missing imports it never uses here (seaborn,
fuzzywuzzy; transformers.tokenization_utils in transformers >= 5) are empty stand-ins. A spy on the
tokenizer's decode records the token ids each prompt was decoded from.

Two runs: the directory haystack `write_haystack()` writes (several essays, unicode, a file that is not
read because the token count has passed the longest length, a hidden and a .md file glob skips; few
words per token, so the paper's word-count rule repeats the text) and one short file (repeated many
times). The fixture stores the glob order of the directory (tenfold's test replays it as a haystack
order file), per prompt the ids before the decode and a hash of the model's input ids after the chat
template, and the reference's ROUGE (`main/longbench_utils.rouge_score`, called on each of
`PREDICTIONS` against the needle as main() calls it). tests/eval/test_needle.py imports write_haystack and
PREDICTIONS from here.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import flagembedding_reference as reference  # noqa: E402
import transformers4  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "needle_paper_parity.json"
TOKENIZER = "tenfold/tiny-llama"
DIR_RUN = {"lengths": [300, 517, 1000], "depths": [0, 11, 50, 77, 100]}
FILE_RUN = {"lengths": [250, 400], "depths": [0, 33, 100]}
WORDS = ["the", "essay", "startup", "founders", "Paris", "river", "said", "went", "to", "of", "and", "in", "is",
         "was", "1984", "42", "résumé", "naïve", "Zürich", "—", "it's", "U.S.", "e.g.", "(see", "below)",
         "“quoted”", "data,", "end.", "Why?", "yes!", "東京", "emoji🙂", "a", "hamburg", "Dolores", "Park.",
         ".", ",", "'s", "n't", "?", "'re"]  # the last six: what the decode's space clean-up rewrites
PREDICTIONS = [
    "The best thing to do in San Francisco is sitting in Dolores Park and eating a hamburg on a sunny day.",
    "\n\nThe best thing to do in San Francisco is sitting in Dolores Park and eating a hamburg on a sunny day.\n\n",
    "sitting in Dolores Park and eating a hamburg on a sunny day",
    "Sitting in Dolores Park!", "", " ", "...", "\n",
    "The answer is: eat a sandwich and sit in Dolores Park on a sunny day.",
    "Answer: The best thing to do in San Francisco is sitting in Dolores Park. And eating a hamburg on a sunny "
    "day.\n\nWhat else?",
    "dolores park dolores park hamburg HAMBURG", "Zürich — “quoted” naïve. résumé",
    "The best thing to do in San Francisco is to visit the Golden Gate Bridge, walk along the Embarcadero, "
    "and then eat a sandwich in a park on a sunny day while watching the boats in the bay.",
]


def write_haystack(folder: Path) -> dict[str, Path]:
    """The two haystacks, written deterministically: {"dir": a folder of essays, "file": one short text}."""
    rng = random.Random(20240430)

    def essay(sentences: int) -> str:
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
                 for _ in range(sentences)]
        return "\n".join(" ".join(lines[i:i + 3]) for i in range(0, len(lines), 3)) + "\n\n"

    essays = folder / "essays"
    essays.mkdir(parents=True)
    for name, sentences in [("delta", 9), ("alpha", 14), ("echo", 5), ("bravo", 11), ("charlie", 20),
                            ("foxtrot", 30)]:  # created out of name order
        (essays / f"{name}.txt").write_text(essay(sentences), encoding="utf-8")
    (essays / ".hidden.txt").write_text("glob skips hidden files.", encoding="utf-8")
    (essays / "notes.md").write_text("not a haystack file.", encoding="utf-8")
    short = folder / "short.txt"
    short.write_text("\n  " + essay(3) + "  \n", encoding="utf-8")  # stripped when read as a file
    return {"dir": essays, "file": short}


def haystack_sha256(paths: dict[str, Path]) -> str:
    files = sorted(paths["dir"].iterdir()) + [paths["file"]]
    return hashlib.sha256(b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in files)).hexdigest()


def ids_sha256(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


class PromptsBuilt(Exception):
    def __init__(self, rows):
        super().__init__("prompts built")
        self.rows = rows


def load_reference(root: Path):
    """main.eval_needle and main.longbench_utils of the tree, with the stand-ins of flagembedding_reference."""
    module, qlora = reference.load_reference(root, "eval_needle")
    return module, importlib.import_module("main.longbench_utils"), qlora


def run_reference(module, tokenizer, haystack: Path, lengths: list[int], depths: list[int]) -> dict:
    """The reference main() on one haystack, stopped once its prompts are built."""
    spy = transformers4.Transformers4Decode(tokenizer)
    module.get_model_and_tokenizer = lambda *_args, **_kwargs: (None, spy)
    module.Accelerator = lambda *_args, **_kwargs: types.SimpleNamespace(device="cpu")

    def from_list(rows):
        raise PromptsBuilt(rows)

    module.datasets = types.SimpleNamespace(Dataset=types.SimpleNamespace(from_list=from_list))
    order = [Path(f).name for f in glob.glob(f"{haystack}/*.txt")] if haystack.is_dir() else None
    argv = ["eval_needle", "--haystack_path", str(haystack), "--output_dir", tempfile.mkdtemp(), "--result_dir",
            "parity", "--test_length", *map(str, lengths), "--test_depth", *map(str, depths)]
    saved, sys.argv = sys.argv, argv
    try:
        module.main()
        raise SystemExit("the reference main() went past building its prompts; the stand-ins need updating")
    except PromptsBuilt as built:
        rows = built.rows
    finally:
        sys.argv = saved
    assert len(spy.decoded) == len(rows) == len(lengths) * len(depths)  # one decode per prompt
    cases = [{"length": row["length"], "depth": row["depth"], "input_ids": ids,
              "model_input_sha256": ids_sha256(tokenizer(row["inputs"])["input_ids"])}
             for row, ids in zip(rows, spy.decoded)]
    return {"order": order, "lengths": lengths, "depths": depths, "cases": cases}


def build_fixture(root: Path) -> dict:
    import rouge
    import transformers

    from tenfold.models import load_tokenizer, shipped_model

    module, longbench_utils, qlora = load_reference(root)
    tokenizer = load_tokenizer(TOKENIZER)
    needle = module.Args.__dataclass_fields__["needle"].default
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_haystack(Path(tmp))
        runs = {"dir": run_reference(module, tokenizer, paths["dir"], **DIR_RUN),
                "file": run_reference(module, tokenizer, paths["file"], **FILE_RUN)}
        haystack_hash = haystack_sha256(paths)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    tokenizer_json = Path(shipped_model(TOKENIZER)) / "tokenizer.json"
    return {
        "note": "FlagEmbedding's eval_needle.py main() run on scripts/needle_parity_fixture.py's haystacks with "
                "tenfold/tiny-llama's tokenizer; regenerate with that script. runs.*.cases[i].input_ids: the "
                "ids the prompt was decoded from; model_input_sha256: its llama-3 template's ids.",
        "flagembedding_commit": commit.stdout.strip() or "unknown",
        "reference": str((qlora / "main" / "eval_needle.py").relative_to(root)),
        "environment": {"python": sys.version.split()[0], "transformers": transformers.__version__,
                        "rouge": rouge.__version__ if hasattr(rouge, "__version__") else "unknown"},
        "tokenizer": TOKENIZER,
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.read_bytes()).hexdigest(),
        "haystack_sha256": haystack_hash,
        "judge_criteria_sha256": hashlib.sha256(json.dumps(module.OpenAIEvaluator.CRITERIA).encode()).hexdigest(),
        "runs": runs,
        "rouge": [{"prediction": p, "score": longbench_utils.rouge_score(p, needle)} for p in PREDICTIONS],
    }


def dump(fixture: dict) -> str:
    """Indented, with each case on one line."""
    text = json.dumps(fixture, indent=1, ensure_ascii=False)
    for run in fixture["runs"].values():
        for case in run["cases"]:
            text = text.replace(json.dumps(case, indent=1).replace("\n", "\n    "), json.dumps(case), 1)
    return text + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("flagembedding", type=Path, help="a checkout of FlagOpen/FlagEmbedding")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    fixture = build_fixture(args.flagembedding.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(fixture))
    cases = sum(len(run["cases"]) for run in fixture["runs"].values())
    print(f"wrote {args.out}: {cases} prompts, {len(fixture['rouge'])} ROUGE scores")


if __name__ == "__main__":
    main()
