"""The paper's own eval code (FlagEmbedding Long_LLM/longllm_qlora), importable offline, for the fixture makers.

Shared by scripts/*_parity_fixture.py that run one of its main/eval_*.py modules: `load_reference` imports
main.<name> of a FlagEmbedding tree (a checkout, research/Long_LLM/longllm_qlora, or the paper's commit
9f7dcd2, Long_LLM/longllm_qlora) with stand-ins for what it imports and has no use for here (its model
loader, accelerate's pieces; seaborn, fuzzywuzzy when absent; transformers.tokenization_utils in
transformers >= 5), and the real src/chat.py apply_chat_template. `Transformers4Decode` is a tokenizer
that decodes as the paper's transformers 4.x did; `write_fixture` is the makers' command line. Nothing of
FlagEmbedding is stored in tenfold.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path


class Transformers4Decode:
    """The tokenizer, decoding as transformers 4.x did (the paper ran 4.35.1 and 4.39.3), recording the ids.

    Its decode applied the tokenizer's clean_up_tokenization (" ." -> ".", " 's" -> "'s", ...) when the call
    or the tokenizer's config asked for it or said nothing (default True), BPE tokenizers included;
    transformers 5 skips it for BPE. tiny-llama's tokenizer files cannot be loaded by 4.x, so that one rule
    is kept here; the clean-up itself is transformers' own function. `decoded`: the ids of every decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, []

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        self.decoded.append(list(ids))
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False, **kwargs)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.tokenizer.init_kwargs.get("clean_up_tokenization_spaces", True)
        return self.tokenizer.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, rows, **kwargs):
        return [self.decode(row, **kwargs) for row in rows]

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def stand_in(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


@dataclasses.dataclass
class ModelArgs:
    """The fields the eval mains read of src.args.ModelArgs; the real one loads models."""
    cpu: bool = True
    chat_template: str = "llama-3"
    enable_tp: bool = False
    batch_size: int = 1

    def __post_init__(self):
        pass

    def resolve_path(self, path):
        return path


def find_qlora(root: Path, main_file: str) -> Path:
    """The longllm_qlora folder of a FlagEmbedding tree holding main/<main_file>; exits if there is none."""
    candidates = [root / "research" / "Long_LLM" / "longllm_qlora", root / "Long_LLM" / "longllm_qlora", root]
    qlora = next((c for c in candidates if (c / "main" / main_file).is_file()), None)
    if qlora is None:
        sys.exit(f"{root}: no (research/)Long_LLM/longllm_qlora/main/{main_file}; give a FlagEmbedding tree")
    return qlora


def load_reference(root: Path, name: str, model_args=ModelArgs, **src_attributes):
    """(main.<name>, the longllm_qlora folder); src_attributes replace stand-ins of the `src` package."""
    qlora = find_qlora(root, f"{name}.py")
    for missing in ("seaborn", "fuzzywuzzy"):  # plots and longbench_utils' code metric, not called here
        if importlib.util.find_spec(missing) is None:
            stand_in(missing, fuzz=types.ModuleType("fuzz"))
    try:
        importlib.import_module("transformers.tokenization_utils").BatchEncoding
    except (ImportError, AttributeError):  # transformers >= 5 moved these
        import transformers

        stand_in("transformers.tokenization_utils", PreTrainedTokenizer=transformers.PreTrainedTokenizerBase,
                 BatchEncoding=transformers.BatchEncoding)
    attributes = {"ModelArgs": model_args, "DefaultDataCollator": None, "FileLogger": None, "makedirs": None,
                  "get_model_and_tokenizer": None, **src_attributes}
    src = stand_in("src", **attributes)
    src.__path__ = [str(qlora / "src")]
    src.apply_chat_template = importlib.import_module("src.chat").apply_chat_template  # the real template
    stand_in("main").__path__ = [str(qlora / "main")]
    return importlib.import_module(f"main.{name}"), qlora


def provenance(root: Path, qlora: Path, main_file: str) -> dict:
    """Where a fixture comes from: the FlagEmbedding commit, the reference file, python and transformers."""
    import transformers

    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"flagembedding_commit": commit.stdout.strip() or "9f7dcd2 (an archive, no git)",
            "reference": str((qlora / "main" / main_file).relative_to(root)),
            "environment": {"python": sys.version.split()[0], "transformers": transformers.__version__}}


def dump(fixture: dict) -> str:
    """Indented, with each case on one line."""
    text = json.dumps({**fixture, "cases": []}, indent=1, ensure_ascii=False)
    cases = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in fixture["cases"])
    return text.replace('"cases": []', '"cases": [\n  ' + cases + "\n ]") + "\n"


def write_fixture(doc: str, default_out: Path, build_fixture) -> tuple[Path, dict]:
    """A maker's command line: build_fixture(the FlagEmbedding tree given) written to --out."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("flagembedding", type=Path, help="a FlagEmbedding tree at the paper's commit 9f7dcd2")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    fixture = build_fixture(args.flagembedding.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(fixture))
    return args.out, fixture
