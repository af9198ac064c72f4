"""Regenerate tests/fixtures/longbench_official_parity.json: LongBench's own pred.py prompts and predictions.

    mkdir -p /tmp/lb && git -C /path/to/LongBench archive 2e00731 LongBench | tar -x -C /tmp/lb  # or a checkout
    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/longbench_official_parity_fixture.py /tmp/lb

The argument is a THUDM/LongBench tree whose LongBench/ folder holds pred.py and config/ (the commit 2e00731
tenfold's longbench.CONFIG_URL pins). Nothing of its code is stored; the fixture holds token ids,
predictions and hashes.

What runs is pred.py's real `get_pred`, once per (model name, dataset), on the records of
longbench_fixture_inputs.build_records() (several per dataset, most longer than MAX_LENGTH so the middle
cut triggers) with max_length = MAX_LENGTH, the config's dataset2prompt and dataset2maxlen, and the model
of longbench_fixture_inputs.write_model() (tenfold/tiny-llama, whose output rows make "\\n", <|eot_id|> and
" ." decide some cases). What it cannot use offline is a stand-in: the llama_flash_attn_monkey_patch module
(it imports flash_attn; get_pred never calls it), torch.distributed's destroy_process_group (get_pred ends
with it; no process group here), the cuda:{rank} device (cpu), and load_model_and_tokenizer, which returns
that model and its tokenizer decoding as pred.py's transformers 4.31.0 (its requirements' pin) did
(transformers4.Transformers4Decode: the space clean-up, " ." -> ".", that transformers 5 skips for a BPE
tokenizer), for the cut and for the new ids. Everything else is pred.py's: the cut, build_chat, the tokenizer
call (BOS as the tokenizer adds it), generate (greedy; samsum's min_length and its eos_token_id list of the
tokenizer's eos and the "\\n" token; the other datasets stop at the generation config's end ids) and the
decode. A spy on model.generate records each call's `input_ids` (the model's input) and `output_ids` (the
new ids); `prediction` is the "pred" of the JSONL get_pred writes to its out_path.

Two model names: MODEL_NAMES, one no branch of build_chat takes (the prompt as it is) and
"llama2-7b-chat-4k" ([INST]prompt[/INST]), as tenfold's --chat-template none and longbench-llama2 render
them. tests/eval/test_longbench.py checks tenfold's official preset against it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import fixture_files  # noqa: E402
import longbench_fixture_inputs as inputs  # noqa: E402
from transformers4 import Transformers4Decode  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "longbench_official_parity.json"
MODEL_NAMES = ["tiny-llama", "llama2-7b-chat-4k"]  # build_chat: no branch (the prompt as it is), [INST]..[/INST]


def find_longbench(root: Path) -> Path:
    """The LongBench/ folder of a THUDM/LongBench tree (or the folder itself); exits if there is none."""
    folder = next((c for c in (root / "LongBench", root) if (c / "pred.py").is_file()), None)
    if folder is None:
        sys.exit(f"{root}: no LongBench/pred.py; give a THUDM/LongBench tree")
    return folder


def load_pred(folder: Path):
    """pred.py as a module, its flash-attention patch a stand-in (pred.py imports it at the top)."""
    sys.modules["llama_flash_attn_monkey_patch"] = types.SimpleNamespace(replace_llama_attn_with_flash_attn=None)
    spec = importlib.util.spec_from_file_location("longbench_pred", folder / "pred.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spy_on_generate(model) -> list[dict]:
    """model.generate, recording each call's input ids and new ids (batch size 1, as get_pred calls it)."""
    calls, generate = [], model.generate

    def recording(**kwargs):
        output = generate(**kwargs)
        width = kwargs["input_ids"].shape[1]
        calls.append({"input_ids": kwargs["input_ids"][0].tolist(), "output_ids": output[0, width:].tolist()})
        return output

    model.generate = recording
    return calls


def run_get_pred(pred, model, tokenizer, model_name: str, records: list[dict], configs: tuple, out: Path) -> list:
    """get_pred on each dataset's records for one model name; the cases in the records' order."""
    import torch

    prompts, maxlen = configs
    calls = spy_on_generate(model)
    pred.load_model_and_tokenizer = lambda *_args: (model, Transformers4Decode(tokenizer))
    pred.dist = types.SimpleNamespace(destroy_process_group=lambda: None)
    pred.torch = types.SimpleNamespace(device=lambda _name: torch.device("cpu"))  # get_pred's cuda:{rank}
    cases = []
    for dataset in inputs.DATASETS:
        data = [r for r in records if r["dataset"] == dataset]
        out_path = out / model_name / f"{dataset}.jsonl"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        pred.get_pred(0, 1, data, inputs.MAX_LENGTH, maxlen[dataset], prompts[dataset], dataset, "cpu", model_name,
                      {model_name: "the tiny model"}, str(out_path))
        written = [json.loads(line) for line in out_path.read_text().splitlines()]
        done, calls[:] = list(calls), []
        assert len(written) == len(done) == len(data), (dataset, len(written), len(done))
        for record, call, row in zip(data, done, written):
            cases.append({"id": record["_id"], "dataset": dataset, "model_name": model_name, **call,
                          "prediction": row["pred"]})
    return cases


def build_fixture(root: Path) -> dict:
    from tenfold.models import load_tokenizer

    folder = find_longbench(root)
    pred = load_pred(folder)
    configs = tuple(json.loads((folder / "config" / name).read_text())
                    for name in ("dataset2prompt.json", "dataset2maxlen.json"))
    tokenizer = load_tokenizer(inputs.MODEL)
    records = inputs.build_records()
    with tempfile.TemporaryDirectory() as tmp:
        model = inputs.load_model(Path(tmp) / "model")
        cases = [case for name in MODEL_NAMES
                 for case in run_get_pred(pred, model, tokenizer, name, records, configs, Path(tmp) / "pred")]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    sha256 = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
              for name in ("pred.py", "config/dataset2prompt.json", "config/dataset2maxlen.json")}
    return {
        "note": "LongBench's pred.py get_pred (max_length 200) with the decode of its transformers 4.31.0, on "
                "scripts/longbench_fixture_inputs.py:build_records() with tenfold/tiny-llama, per model name; "
                "regenerate with scripts/longbench_official_parity_fixture.py.",
        "longbench_commit": commit.stdout.strip() or "2e00731 (an archive, no git)",
        "sha256": sha256,
        **inputs.inputs_record(records),
        "model_names": MODEL_NAMES,
        "cases": cases,
    }


def main() -> None:
    fixture, out = fixture_files.write_fixture(__doc__, "a THUDM/LongBench tree at 2e00731 (its LongBench/pred.py)",
                                        build_fixture, FIXTURE)
    lengths = [len(c["output_ids"]) for c in fixture["cases"]]
    print(f"wrote {out}: {len(lengths)} cases, {min(lengths)}..{max(lengths)} new tokens")


if __name__ == "__main__":
    main()
