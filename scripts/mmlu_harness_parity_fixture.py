"""Regenerate tests/fixtures/mmlu_harness_parity.json: lm-evaluation-harness's own mmlu run on a tiny model.

    python3 -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install torch "lm-eval[hf]"   # its own venv (0.4.13)
    PYTHONPATH=src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 /tmp/lmeval/bin/python scripts/mmlu_harness_parity_fixture.py

Nothing of lm-eval is stored; the fixture holds token ids, log-likelihoods, accuracies and hashes. It runs
lm_eval.simple_evaluate (model "hf", float32, batch size 8, zero-shot) on task yamls written into a
temporary folder, one per subject of `build_records()`: each `include`s lm-eval's own
tasks/mmlu/default/mmlu_<subject>.yaml (its description, doc_to_text, doc_to_choice, metric) and changes only
the data (dataset_path "json" with the records as test and dev split, for an offline run) and the names
("tenfold_" before its task and tag); its groups are lm-eval's own _mmlu*.yaml (mmlu_stem ... and mmlu,
acc weighted by size) renamed the same way. So lm-eval's prompt, " A".." D" continuations, its
context/continuation tokenization (_encode_pair, recorded), its acc and its group aggregation decide.

The records are scripts/mmlu_parity_fixture.py's generator with anatomy added (the subject whose category
lm-eval and FlagEmbedding disagree on). The model is that maker's write_model() (BOS added as Llama-3's
tokenizer does, letter rows levelled), levelled here on the raw prompts with the shared " " token, the
position where lm-eval's letters are scored. tests/eval/test_mmlu.py checks tenfold's lm-eval-harness preset
against this file.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import fixture_files  # noqa: E402
import mmlu_parity_fixture as paper  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mmlu_harness_parity.json"
SUBJECTS = {**paper.SUBJECTS, "anatomy": 3}
PREFIX = "tenfold_"


def build_records() -> list[dict]:
    """The paper maker's records and 3 anatomy questions, in cais/mmlu's fields (question, not query)."""
    return [{"question": r["query"], "subject": r["subject"], "choices": r["choices"], "answer": r["answer"]}
            for r in paper.build_records(SUBJECTS)]


def write_tasks(folder: Path, records: list[dict]) -> str:
    """lm-eval's mmlu subject and group yamls, renamed and reading `records` (one JSONL file per subject, as
    cais/mmlu has one config per subject); the top group's name."""
    import lm_eval
    import yaml

    from tenfold.io import write_jsonl

    default = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    for subject in SUBJECTS:
        data = write_jsonl([r for r in records if r["subject"] == subject], folder / f"{subject}.jsonl")
        own = yaml.safe_load((default / f"mmlu_{subject}.yaml").read_text())
        task = {"include": str(default / f"mmlu_{subject}.yaml"), "task": PREFIX + own["task"],
                "tag": PREFIX + own["tag"], "dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": str(data), "dev": str(data)}}}
        (folder / f"{PREFIX}mmlu_{subject}.yaml").write_text(yaml.safe_dump(task))
    for group in default.glob("_mmlu*.yaml"):
        config = yaml.safe_load(group.read_text())
        config["group"] = PREFIX + config["group"]
        config["task"] = [PREFIX + t for t in config["task"]]
        (folder / f"{PREFIX}{group.name}").write_text(yaml.safe_dump(config))
    return PREFIX + "mmlu"


def levelling_prompts(tokenizer, records: list[dict]) -> list[list[int]]:
    from tenfold.eval.mmlu import format_prompt

    return [tokenizer(format_prompt(r) + " ")["input_ids"] for r in records]


def run_harness(folder: Path, tasks: Path, top: str) -> tuple[dict, dict]:
    """simple_evaluate's results and the ids its _encode_pair gave each (context, continuation)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # max_length: past the tiny model's 256 positions, as tenfold scores a prompt whole (no left cut)
    lm = HFLM(pretrained=str(folder), dtype="float32", batch_size=8, device="cpu", max_length=4096)
    encoded, encode = {}, lm._encode_pair

    def recording(context, continuation):
        encoded[(context, continuation)] = encode(context, continuation)
        return encoded[(context, continuation)]

    lm._encode_pair = recording
    results = lm_eval.simple_evaluate(model=lm, tasks=[top], num_fewshot=0, log_samples=True,
                                      task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    return results, encoded


def fixture_cases(results: dict, encoded: dict) -> list[dict]:
    cases = []
    for task, samples in results["samples"].items():
        subject = task[len(PREFIX + "mmlu_"):]
        for sample in samples:
            pairs = [tuple(request) for request in sample["arguments"]]
            ids = [encoded[pair] for pair in pairs]
            cases.append({"subject": subject, "doc_id": sample["doc_id"], "context": ids[0][0],
                          "continuations": [c for _, c in ids],
                          "loglikelihoods": [float(r[0]) for r in sample["filtered_resps"]],
                          "acc": sample["acc"], "answer": sample["doc"]["answer"]})
    return cases


def build_fixture() -> dict:
    import lm_eval

    from tenfold.models import load_tokenizer

    records = build_records()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks"
        tasks.mkdir()
        top = write_tasks(tasks, records)
        tokenizer = paper.bos_tokenizer(load_tokenizer(paper.MODEL))
        folder = paper.write_model(Path(tmp) / "model", levelling_prompts(tokenizer, records))
        results, encoded = run_harness(folder, tasks, top)
    return {"note": "lm-eval's mmlu yamls (data and names changed) run by simple_evaluate on "
                    "scripts/mmlu_harness_parity_fixture.py:build_records() with scripts/mmlu_parity_fixture.py's "
                    "write_model(); regenerate with that script.",
            "lm_eval": lm_eval.__version__, "records_sha256": paper.records_sha256(records),
            "results": {name: {"acc": value["acc,none"]} for name, value in results["results"].items()},
            "cases": fixture_cases(results, encoded)}


def main() -> None:
    fixture = build_fixture()
    FIXTURE.write_text(fixture_files.dump(fixture))
    print(f"wrote {FIXTURE}: {len(fixture['cases'])} cases; {fixture['results'][PREFIX + 'mmlu']}")


if __name__ == "__main__":
    main()
