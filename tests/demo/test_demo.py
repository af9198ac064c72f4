"""`tenfold demo`: the toy world and its tokenizer, and a quick demo whose report comes from the run."""

import json
import random

import pytest

from tenfold import toy
from tenfold.cli import build_parser
from tenfold.demo.report import summary_row
from tenfold.models import load_tokenizer
from tenfold.synth.extractive import extract
from tenfold.toy import ANIMALS, COLOURS, NAMES, NUMBERS, OBJECTS, VERBS, document

CONTRACT_KEYS = {"native_length", "training_length", "rope_factor", "before", "rope_only", "after", "loss_by_position",
                 "short_check",
                 "seconds"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tenfold/toy-llama")


def test_shipped_tokenizer_makes_every_word_and_number_one_token(tokenizer):
    words = COLOURS + ANIMALS + VERBS + OBJECTS + [o + "s" for o in OBJECTS] + NUMBERS + NAMES + ["number", "is"]
    for word in words:
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    for n in range(100):  # " 42" in a document, "42" as an answer right after the assistant header
        assert len(tokenizer(f" {n}", add_special_tokens=False)["input_ids"]) == 1
        assert len(tokenizer(f"{n}", add_special_tokens=False)["input_ids"]) == 1
    line = document(3, random.Random(0))[1] + "\n"
    assert len(tokenizer(line, add_special_tokens=False)["input_ids"]) == toy.LINE_TOKENS


def test_tokenizer_encodes_what_the_pipeline_writes(tokenizer):
    rng = random.Random(1)
    document = toy.plain_record(30, rng, n_facts=4)["text"]
    items = json.loads(extract("single_detail", [document], 4)) + json.loads(extract("multi_detail", [document], 4))
    assert {i["question"] for i in items} >= {toy.question(n) for n in NAMES if f"number of {n} is" in document}
    turns = [{"role": "user", "content": document + "\n\n" + items[0]["question"]}]
    for item in items:
        turns += [{"role": "assistant", "content": item["answer"]}, {"role": "user", "content": item["question"]}]
    text = tokenizer.apply_chat_template(turns[:-1], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: lossless, no unknown token
    assert ids[0] == tokenizer.bos_token_id and tokenizer.convert_ids_to_tokens(ids[-1]) == "<|eot_id|>"


@pytest.mark.parametrize("length,depth", [(256, 0), (256, 100), (1280, 50), (2560, 25)])
def test_needle_case_fits_its_length_and_puts_the_fact_at_its_depth(tokenizer, length, depth):
    case = toy.needle_case(tokenizer, length, depth, random.Random(5), "x")
    assert length - 2 * toy.LINE_TOKENS <= case["tokens"] <= length
    assert case["tokens"] == toy.prompt_tokens(tokenizer, case["prompt"])
    lines = case["prompt"].split("\n\n")[0].split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("the number of"))
    assert lines[at].endswith(f" is {case['answer']} .")
    assert abs(at / (len(lines) - 1) - depth / 100) < 0.05
    assert case["prompt"].endswith(toy.question(lines[at].split()[3]))


def test_pretrains_schedule_is_transformers_cosine_one_warm_up_step_ahead():
    """pretrain's own schedule (the one toy-llama was trained with) against get_cosine_schedule_with_warmup: the
    same rates from step WARMUP on; within the warm-up, step s has the library's rate of step s + 1."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tenfold.demo.pretrain import LEARNING_RATE, STEPS, WARMUP, learning_rate

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LEARNING_RATE)
    scheduler = get_cosine_schedule_with_warmup(optimizer, WARMUP, STEPS)
    library = []
    for _ in range(STEPS + 1):
        library.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    ours = [learning_rate(step) for step in range(STEPS)]
    assert library[0] == 0.0 and ours[0] == LEARNING_RATE / WARMUP
    assert ours[:WARMUP] == pytest.approx(library[1:WARMUP + 1], rel=1e-12)
    assert ours[WARMUP:] == pytest.approx(library[WARMUP:STEPS], rel=1e-12, abs=1e-18)


def test_demo_flag_reaches_the_demo_function():
    args = build_parser().parse_args(["demo", "--quick", "--rope-factor", "20", "--output-dir", "x"])
    assert (args.quick, args.rope_factor, args.output_dir) == (True, 20.0, "x")


def test_demo_settings_take_the_recipes_demo_section_and_name_a_bad_key(tmp_path, monkeypatch):
    from tenfold.demo import run
    from tenfold.errors import RecipeError

    sizes = run.DemoSettings(quick=True).sizes  # recipes/demo-cpu.yaml's demo: section; --quick applies in demo()
    assert (sizes.conversations, sizes.facts, sizes.synth_tasks) == (1200, [4, 8], ["single_detail"])
    assert sizes.lengths == list(range(1, 11)) and sizes.max_steps is None  # not in the section: the defaults
    bad = tmp_path / "demo.yaml"
    bad.write_text(run.recipe_path().read_text().replace("  plain: 720", "  plian: 720"))
    monkeypatch.setattr(run, "recipe_path", lambda: bad)
    with pytest.raises(RecipeError, match=f"{bad}: unknown demo key 'plian'; allowed: conversations, "):
        run.DemoSettings()
    bad.write_text(run.recipe_path().read_text().replace("facts: [4, 8]", "facts: [4, many]"))
    with pytest.raises(RecipeError, match="demo.facts: expected int, got 'many'"):
        run.DemoSettings()


def read_predictions(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def grid_from_predictions(path):
    cells = {}
    for record in read_predictions(path):
        hit = record["prediction"].strip() == record["answer"]
        cells.setdefault((record["length"], record["depth"]), []).append(hit)
    return {key: sum(hits) / len(hits) for key, hits in cells.items()}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from tenfold.demo.run import DemoSettings, demo

    out = tmp_path_factory.mktemp("demo")
    return out, demo(DemoSettings(str(out), quick=True, rope_factor=20.0))


def test_quick_demo_writes_the_contract(quick_demo):
    out, results = quick_demo
    assert set(json.loads((out / "results.json").read_text())) == CONTRACT_KEYS
    assert results["native_length"] == 256 and results["rope_factor"] == 20.0
    assert results["training_length"] == 2560  # recipes/demo-cpu.yaml's data.max_length
    assert "native length 256 tokens" in (out / "report.md").read_text()
    assert "training length 2,560 tokens" in (out / "report.md").read_text()
    for row in ("before", "rope_only", "after"):
        assert {tuple(sorted(c)) for c in results[row]} == {("accuracy", "depth", "length")}
        assert all(0 <= c["accuracy"] <= 1 for c in results[row])
        assert len(results["loss_by_position"][row]) == 10
        assert 0 <= results["short_check"][row] <= 1
    for picture in ("loss.png", "before/before.png", "rope-x20/rope_only.png", "after-x20/after.png"):
        assert (out / picture).stat().st_size > 1000
        assert picture in (out / "report.md").read_text()
    summary = json.loads((out / "train-x20" / "summary.json").read_text())
    assert summary["rope"]["rope_theta"] == 500.0 * 20  # --rope-factor reached `tenfold train`
    assert summary["steps"] > 0 and summary["data"]


def test_quick_demo_numbers_come_from_its_predictions(quick_demo):
    out, results = quick_demo
    for row, path in [("before", "before/before.predictions.jsonl"),
                      ("rope_only", "rope-x20/rope_only.predictions.jsonl"),
                      ("after", "after-x20/after.predictions.jsonl")]:
        measured = grid_from_predictions(out / path)
        assert {(c["length"], c["depth"]): c["accuracy"] for c in results[row]} == measured
    short = read_predictions(out / "before" / "before.short.predictions.jsonl")
    assert results["short_check"]["before"] == sum(r["prediction"].strip() == r["answer"] for r in short) / len(short)
    # The base's loss climbs past its native length by construction of RoPE base 500; the rows differ.
    losses = results["loss_by_position"]
    assert losses["before"] != losses["rope_only"] != losses["after"]
    report = (out / "report.md").read_text()
    before = summary_row(results, "before")
    assert f"| {before['loss_1x']:.2f} | {before['loss_10x']:.2f} |" in report


def test_quick_demo_report_follows_a_changed_prediction(quick_demo, tmp_path):
    """Rerun on the same directory after editing one recorded prediction: finished work is reused, and
    results.json and the report change with it, so they are computed from the run's files."""
    import shutil

    from tenfold.demo.run import DemoSettings, demo

    out, results = quick_demo
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    path = copy / "before" / "before.predictions.jsonl"
    records = read_predictions(path)
    first = records[0]
    first["prediction"] = first["answer"] if first["prediction"].strip() != first["answer"] else "no"
    first["score"] = float(first["prediction"] == first["answer"])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    again = demo(DemoSettings(str(copy), quick=True, rope_factor=20.0))
    cell = next(c for c in again["before"] if (c["length"], c["depth"]) == (first["length"], first["depth"]))
    old = next(c for c in results["before"] if (c["length"], c["depth"]) == (first["length"], first["depth"]))
    assert cell["accuracy"] != old["accuracy"]
    assert cell["accuracy"] == grid_from_predictions(path)[(first["length"], first["depth"])]
    assert again["after"] == results["after"]  # training was not redone: the adapter's predictions stand


def test_a_demo_rerun_is_keyed_like_eval_other_predictions_are_refused_or_overwritten(tmp_path):
    from tenfold.demo.measure import needle_grid, short_check
    from tenfold.generation import load_backend

    base, raised = load_backend("tenfold/toy-llama"), load_backend("tenfold/toy-llama", rope_theta=400000.0)
    grid = [base, tmp_path, "grid", [128], [50], 1, "title"]
    needle_grid(*grid)
    short_check(base, tmp_path, "grid.short", 256, 2)
    for run in (lambda: needle_grid(raised, *grid[1:]), lambda: short_check(raised, tmp_path, "grid.short", 256, 2)):
        with pytest.raises(ValueError, match="predictions made otherwise .*rope"):
            run()  # the same folder, another RoPE base: never scored with the old predictions
    needle_grid(raised, *grid[1:], overwrite=True)
    key = json.loads((tmp_path / "grid.key.json").read_text())
    assert key["backend"]["rope"]["rope_theta"] == 400000.0 and key["settings"]["lengths"] == [128]


def test_the_report_gives_each_row_rulers_effective_length_on_its_needle_grid():
    from tenfold.demo.report import summary_row

    grid = [{"length": 256, "depth": d, "accuracy": a} for d, a in ((0, 1.0), (100, 1.0))]
    grid += [{"length": 512, "depth": d, "accuracy": a} for d, a in ((0, 1.0), (100, 0.8))]  # 90: above 85.6
    grid += [{"length": 768, "depth": d, "accuracy": a} for d, a in ((0, 0.9), (100, 0.8))]  # 85: not
    results = {"row": grid, "native_length": 256, "loss_by_position": {"row": [1.0, 2.0, 3.0]},
               "short_check": {"row": 1.0}}
    assert summary_row(results, "row")["effective_length"] == 512
    results["row"] = [dict(c, accuracy=0.0) for c in grid]
    assert summary_row(results, "row")["effective_length"] is None
