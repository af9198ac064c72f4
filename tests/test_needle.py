import json

import matplotlib.image
import pytest

from fake_openai import FakeServer
from fakes import FakeBackend
from tenfold.cli import main
from tenfold.generation import load_backend
from tenfold.eval.metrics import Judge, rouge_l_recall
from tenfold.eval.haystack import read_haystack
from tenfold.eval.needle import PRESETS, build_cases, run_needle

ANSWER = PRESETS["paper"].answer


def test_rouge_l_recall_of_the_needles_answer_on_known_strings():
    assert rouge_l_recall("The best thing to do in San Francisco is sitting in Dolores Park and eating a hamburg "
                          "on a sunny day.", ANSWER) == 1.0
    assert rouge_l_recall("Sitting in Dolores Park!", ANSWER) == pytest.approx(4 / 12)  # 4 of the answer's 12 words, in order
    assert rouge_l_recall("the red fox", ANSWER) == 0.0
    assert rouge_l_recall("", ANSWER) == 0.0
    assert rouge_l_recall("a day", ANSWER) == pytest.approx(2 / 12)


def test_cases_put_the_needle_at_each_depth_on_a_sentence_boundary_within_the_length(tiny_backend):
    tok = tiny_backend.tokenizer
    preset = PRESETS["paper"]
    preset = type(preset)(**{**preset.__dict__, "lengths": [300, 600], "depths": [0, 25, 50, 75, 100]})
    cases = build_cases(tok, read_haystack("toy", 5000), preset)
    assert [(c["length"], c["depth"]) for c in cases] == [(L, d) for L in (300, 600) for d in (0, 25, 50, 75, 100)]
    for length in (300, 600):
        offsets = []
        for case in (c for c in cases if c["length"] == length):
            text = case["prompt"]
            assert text.count(preset.needle) == 1 and text.startswith(preset.prefix) and text.endswith(preset.question)
            assert length - 8 <= len(tok(text, add_special_tokens=False)["input_ids"]) <= length + 2
            before = text[len(preset.prefix):text.index(preset.needle)]
            after = text[text.index(preset.needle) + len(preset.needle):-len(preset.question)]
            if case["depth"] == 0:
                assert before == ""
            elif case["depth"] == 100:
                assert after == ""
            else:
                assert before.rstrip().endswith(".")  # a sentence boundary of the toy text
            offsets.append(len(before) / (len(before) + len(after)))
        assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] == 1
        assert 0.35 < offsets[2] < 0.55  # depth 50, moved back to a sentence end


def test_haystack_is_the_same_everywhere_files_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("second file. ")
    (tmp_path / "a.txt").write_text("first file. ")
    (tmp_path / "notes.md").write_text("not a haystack file")
    assert read_haystack(tmp_path) == "first file. second file. "
    assert read_haystack("toy", 3000) == read_haystack(None, 3000) and len(read_haystack("toy", 3000)) >= 3000
    with pytest.raises(FileNotFoundError, match="not found"):
        read_haystack(tmp_path / "missing.txt")


def test_needle_from_cli_and_python_writes_cells_and_a_heatmap_deterministically(tiny_model_dir, tiny_backend, tmp_path):
    main(["eval", "needle", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "cli"),
          "--lengths", "300,450", "--depths", "0,50,100", "--max-length", "1024", "--training-length", "300"])
    cells = json.loads((tmp_path / "cli" / "needle.json").read_text())
    assert len(cells) == 6
    for cell in cells:
        assert {"length", "depth", "score", "prediction"} <= set(cell)
        assert cell["score"] == rouge_l_recall(cell["prediction"], ANSWER) and cell["scorer"] == "rouge-l-recall"
    image = matplotlib.image.imread(tmp_path / "cli" / "needle.png")
    assert image.shape[0] > 400 and image.shape[1] > 1000
    summary = json.loads((tmp_path / "cli" / "needle.summary.json").read_text())
    assert summary["preset"] == "paper" and summary["scorer"] == "rouge-l-recall"
    assert summary["model"]["native_length"] == 256 and summary["model"]["training_length"] == 300  # as given

    from_python = run_needle(tiny_backend, tmp_path / "py", lengths=[300, 450], depths=[0, 50, 100])
    assert json.loads((tmp_path / "py" / "needle.json").read_text()) == cells
    assert from_python["score"] == summary["score"]
    # the paper preset marks no length of its own: an untrained model has none (it once said 80,000 for any)
    assert from_python["model"]["native_length"] == 256 and from_python["model"]["training_length"] is None


def test_killed_needle_run_resumes_without_redoing_or_duplicating_cells(tiny_backend, tmp_path):
    grid = dict(lengths=[300, 450], depths=[0, 33, 66, 100])
    dying = FakeBackend(inner=tiny_backend, die_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_needle(dying, tmp_path, **grid)
    log = tmp_path / "needle.predictions.jsonl"
    assert len(log.read_text().splitlines()) == 4  # one batch of 4 cells finished before the kill
    with open(log, "a") as f:
        f.write('{"id": "L450-D66", "length": 45')  # a line cut short by the kill
    resumed = FakeBackend(inner=tiny_backend)
    run_needle(resumed, tmp_path, **grid)
    assert len(resumed.prompts) == 4 and len(resumed.calls) == 1  # only the unfinished cells, batched
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert sorted(ids) == sorted(f"L{L}-D{d}" for L in (300, 450) for d in (0, 33, 66, 100))
    again = FakeBackend(inner=tiny_backend)
    run_needle(again, tmp_path, **grid)
    assert again.calls == []


def test_a_length_beyond_the_model_fails_before_any_work(tiny_model_dir, tmp_path):
    counting = FakeBackend(inner=load_backend(str(tiny_model_dir)))  # configured for 256 tokens
    with pytest.raises(ValueError, match="--max-length"):
        run_needle(counting, tmp_path / "out", lengths=[300])
    assert counting.calls == [] and not (tmp_path / "out").exists()


def test_judge_uses_the_rubric_and_parses_the_rating():
    replies = iter(["The answer matches the reference. Rating: [[7]]", "I think it is fine."])
    server = FakeServer(answer=lambda _: next(replies))
    try:
        judge = Judge("judge-model", base_url=server.url)
        assert judge("What is the best thing to do in San Francisco?", "eat a sandwich", "a sandwich") == 7
        with pytest.raises(ValueError, match="rating"):
            judge("q", "r", "p")
    finally:
        server.close()
    _, body = server.requests[0]
    assert body["temperature"] == 0 and body["model"] == "judge-model"
    prompt = body["messages"][-1]["content"]
    assert "Score 10: The answer is completely accurate" in prompt and "[Ground truth]\neat a sandwich" in prompt
