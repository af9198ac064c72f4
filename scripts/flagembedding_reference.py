"""The paper's own eval code (FlagEmbedding Long_LLM/longllm_qlora), importable offline, for the fixture makers.

Shared by scripts/*_parity_fixture.py that run one of its main/eval_*.py modules: `load_reference` imports
main.<name> of a FlagEmbedding tree (a checkout, research/Long_LLM/longllm_qlora, or the paper's commit
9f7dcd2, Long_LLM/longllm_qlora) with stand-ins for what it imports and has no use for here (its model
loader, accelerate's pieces; seaborn, fuzzywuzzy when absent; transformers.tokenization_utils in
transformers >= 5), and the real src/chat.py apply_chat_template; `provenance` is where a fixture came from
(transformers4.Transformers4Decode decodes as the paper's transformers 4.x did; fixture_files writes the
fixture). Nothing of FlagEmbedding is stored in tenfold.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path


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
