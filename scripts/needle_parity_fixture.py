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
import dataclasses
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


class DecodeSpy:
    """The tokenizer, recording the ids of every decode, which it does as transformers 4.35.1 did.

    The paper's needle runs used transformers 4.35.1, whose decode applied the tokenizer's
    clean_up_tokenization (" ." -> ".", ...) when its config asked for it or said nothing (default True),
    BPE tokenizers included; transformers 5 skips it for BPE. tiny-llama's tokenizer files cannot be
    loaded by 4.35.1, so that one rule is kept here; the clean-up itself is transformers' own function."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, []

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        self.decoded.append(list(ids))
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False, **kwargs)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.tokenizer.init_kwargs.get("clean_up_tokenization_spaces", True)
        return self.tokenizer.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


class PromptsBuilt(Exception):
    def __init__(self, rows):
        super().__init__("prompts built")
        self.rows = rows


def _stand_in(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def load_reference(root: Path):
    """main.eval_needle of the checkout, imported with stand-ins for what it cannot load offline."""
    candidates = [root / "research" / "Long_LLM" / "longllm_qlora", root / "Long_LLM" / "longllm_qlora", root]
    qlora = next((c for c in candidates if (c / "main" / "eval_needle.py").is_file()), None)
    if qlora is None:
        sys.exit(f"{root}: no research/Long_LLM/longllm_qlora/main/eval_needle.py; give a FlagEmbedding checkout")
    for name in ("seaborn", "fuzzywuzzy"):
        if importlib.util.find_spec(name) is None:
            _stand_in(name, fuzz=types.ModuleType("fuzz"))
    try:
        importlib.import_module("transformers.tokenization_utils").BatchEncoding
    except (ImportError, AttributeError):  # transformers >= 5 moved these
        import transformers

        _stand_in("transformers.tokenization_utils", PreTrainedTokenizer=transformers.PreTrainedTokenizerBase,
                  BatchEncoding=transformers.BatchEncoding)

    @dataclasses.dataclass
    class ModelArgs:  # the fields main() reads; the real one loads models
        cpu: bool = True
        chat_template: str = "llama-3"
        enable_tp: bool = False
        batch_size: int = 1

        def __post_init__(self):
            pass

        def resolve_path(self, path):
            return path

    src = _stand_in("src", ModelArgs=ModelArgs, DefaultDataCollator=None, FileLogger=None, makedirs=None,
                    get_model_and_tokenizer=None)
    src.__path__ = [str(qlora / "src")]
    src.apply_chat_template = importlib.import_module("src.chat").apply_chat_template  # the real template
    _stand_in("main").__path__ = [str(qlora / "main")]
    return importlib.import_module("main.eval_needle"), importlib.import_module("main.longbench_utils"), qlora


def run_reference(module, tokenizer, haystack: Path, lengths: list[int], depths: list[int]) -> dict:
    """The reference main() on one haystack, stopped once its prompts are built."""
    spy = DecodeSpy(tokenizer)
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
