import contextlib
import hashlib
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from fake_openai import FakeServer
from fakes import FakeBackend
from fixture_makers import load_maker
from tenfold.cli import main
from tenfold.errors import UserError
from tenfold.eval import metrics
from tenfold.eval.haystack import haystack_files, read_haystack
from tenfold.eval.metrics import JUDGE_CRITERIA, Judge, rouge_l_f1, rouge_l_recall
from tenfold.eval.needle import (
    PRESETS,
    build_cases,
    encoder,
    paper_haystack,
    paper_prompt_ids,
    run_needle,
)
from tenfold.eval.runner import transformers4_decode
from tenfold.generation import load_backend, render_prompt
from tenfold.models import load_tokenizer, shipped_model

ROOT = Path(__file__).resolve().parents[2]
ANSWER = PRESETS["paper"].answer
NEEDLE = PRESETS["paper"].needle
PARITY = json.loads((ROOT / "tests" / "fixtures" / "needle_paper_parity.json").read_text())
HAS_LANGCHAIN = any(importlib.util.find_spec(name) for name in ("langchain_classic", "langchain"))
needs_langchain = pytest.mark.skipif(not HAS_LANGCHAIN, reason="the judge reads LangChain's labeled_score_string "
                                     "prompt: pip install langchain-classic")


@contextlib.contextmanager
def fake_judge(replies: list[str]):
    """A judge on the fake OpenAI server, which answers with the next of `replies` (the last one from then on);
    yields (judge, the request bodies it received)."""
    bodies = []

    def answer(body):
        bodies.append(body)
        return replies[min(len(bodies), len(replies)) - 1]

    server = FakeServer(answer=answer)
    try:
        yield Judge("judge-model", base_url=server.url), bodies
    finally:
        server.close()


def test_rouge_l_recall_of_the_needles_answer_on_known_strings():
    assert rouge_l_recall("The best thing to do in San Francisco is sitting in Dolores Park and eating a hamburg "
                          "on a sunny day.", ANSWER) == 1.0
    assert rouge_l_recall("Sitting in Dolores Park!", ANSWER) == pytest.approx(4 / 12)  # 4 of its 12 words, in order
    assert rouge_l_recall("the red fox", ANSWER) == 0.0
    assert rouge_l_recall("", ANSWER) == 0.0
    assert rouge_l_recall("a day", ANSWER) == pytest.approx(2 / 12)


def test_rouge_l_f1_is_the_rouge_packages_f_against_the_whole_needle():
    assert rouge_l_f1(NEEDLE, NEEDLE) == pytest.approx(0.999999995, abs=1e-12)  # 2PR / (P + R + 1e-8)
    assert rouge_l_f1("", NEEDLE) == 0.0  # `rouge` raises on an empty text; the paper's bare except scores 0
    assert rouge_l_f1("the red fox", NEEDLE) == 0.0
    assert 0.5 < rouge_l_f1("sitting in Dolores Park and eating a hamburg on a sunny day", NEEDLE) < 0.8


def test_paper_preset_is_the_published_grid():
    paper = PRESETS["paper"]
    assert paper.lengths[:3] == [8000, 14315, 20631] and paper.lengths[-2:] == [121684, 128000]
    assert len(paper.lengths) == 20 and paper.depths == [0, 11, 22, 33, 44, 55, 66, 77, 88, 100]
    assert paper.max_new_tokens == 50 and paper.scorer == "paper-rouge" and paper.construction == "paper"
    assert paper.judge_question == "What is the best thing to do in San Francisco?\nAnswer:"
    assert paper.judge_reference == NEEDLE.strip() and PRESETS["original"].scorer == "rouge"


def test_paper_cases_put_the_needle_at_the_papers_token_offset_without_snapping(tiny_backend):
    tok = tiny_backend.tokenizer
    preset = replace(PRESETS["paper"], lengths=[300, 600], depths=[0, 25, 50, 75, 100])
    encode = encoder(tok)
    prefix, needle, question = encode(preset.prefix), encode(preset.needle), encode(preset.question)
    haystack = read_haystack("toy", 5000)
    context = encode(haystack)
    cases = build_cases(tok, haystack, preset)
    assert [(c["length"], c["depth"]) for c in cases] == [(L, d) for L in (300, 600) for d in (0, 25, 50, 75, 100)]
    for length in (300, 600):
        budget = length - len(prefix) - len(needle) - len(question)
        last = length - len(question) - len(needle) - 1
        prompts = dict(zip(preset.depths, paper_prompt_ids(tok, haystack, length, preset.depths, preset)))
        for depth, (position, ids) in prompts.items():
            assert len(ids) == length  # the prefix, needle and question inside the length
            assert position == len(prefix) + round((last - len(prefix)) * depth / 100)  # counts the prefix
            body = context[:budget]  # the head of the haystack
            assert ids == prefix + body[:position] + needle + body[position:] + question
        assert prompts[0][0] == len(prefix) and prompts[100][0] > budget  # depth 100: the needle at the end
        assert prompts[50][0] == round(len(prefix) + (last - len(prefix)) / 2)  # raw, not moved to a sentence end
    case = next(c for c in cases if c["id"] == "L600-D50")  # prompts: those of the last length, 600
    assert case["prompt"] == transformers4_decode(tok, prompts[50][1])  # one decode of the whole id list
    assert case["prompt"].startswith(preset.prefix) and case["prompt"].endswith(preset.question)


def test_paper_repeats_a_haystack_with_fewer_words_than_the_length(tiny_backend):
    tok = tiny_backend.tokenizer
    preset = replace(PRESETS["paper"], lengths=[400], depths=[0])
    encode = encoder(tok)
    prefix, needle, question = encode(preset.prefix), encode(preset.needle), encode(preset.question)
    fixed = len(prefix) + len(needle) + len(question)
    short = "one two three. four five six "  # 6 words: the text repeated ceil(400 / 6) times, then cut
    [(position, ids)] = paper_prompt_ids(tok, short, 400, [0], preset)
    body = encode(short * 67)[:400 - fixed]  # "six one": repeated as text, not as tokens ("six ", "one")
    assert body != (encode(short) * 67)[:len(body)]
    assert ids == prefix + body[:position] + needle + body[position:] + question
    with pytest.raises(ValueError, match="no room"):
        paper_prompt_ids(tok, short, fixed, [0], preset)


def test_paper_scores_the_prediction_as_its_batch_decode_gave_it(tiny_backend, tmp_path):
    answer = "sitting in Dolores Park , eating a hamburg on a sunny day ."
    run_needle(FakeBackend(lambda _: answer, inner=tiny_backend), tmp_path, lengths=[300], depths=[0])
    [cell] = json.loads((tmp_path / "needle.json").read_text())
    cleaned = "sitting in Dolores Park, eating a hamburg on a sunny day."
    assert cell["prediction"] == answer and rouge_l_f1(cleaned, NEEDLE) != rouge_l_f1(answer, NEEDLE)
    assert cell["score"] == rouge_l_f1(cleaned, NEEDLE)
    run_needle(FakeBackend(lambda _: answer, inner=tiny_backend), tmp_path / "no", lengths=[300], depths=[0],
               clean_up_spaces="no")
    assert json.loads((tmp_path / "no" / "needle.json").read_text())[0]["score"] == rouge_l_f1(answer, NEEDLE)


def test_original_cases_put_the_needle_on_a_sentence_boundary_within_the_length(tiny_backend):
    tok = tiny_backend.tokenizer
    preset = replace(PRESETS["original"], lengths=[500, 800], depths=[0, 25, 50, 75, 100])
    cases = build_cases(tok, read_haystack("toy", 5000), preset)
    for length in (500, 800):
        offsets = []
        for case in (c for c in cases if c["length"] == length):
            text = case["prompt"]
            assert text.count(preset.needle) == 1 and text.endswith(preset.question)
            assert len(tok(text, add_special_tokens=False)["input_ids"]) <= length - preset.buffer + 2
            before = text[:text.index(preset.needle)]
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
    with pytest.raises(UserError, match="not found"):
        read_haystack(tmp_path / "missing.txt")


def test_haystack_order_sorted_filesystem_or_a_listing(tmp_path):
    for name in ("c", "a", "b"):
        (tmp_path / f"{name}.txt").write_text(f"{name}. ")
    (tmp_path / ".hidden.txt").write_text("skipped, as glob skips it")
    import glob
    import os

    assert [f.name for f in haystack_files(tmp_path)] == ["a.txt", "b.txt", "c.txt"]
    as_glob = [os.path.basename(f) for f in glob.glob(f"{tmp_path}/*.txt")]  # what the paper's code reads
    assert [f.name for f in haystack_files(tmp_path, "filesystem")] == as_glob
    listing = tmp_path / "order.list"
    folder = f"long-llm/needle/{tmp_path.name}/"  # as tar tzf lists the paper's archive
    listing.write_text(f"long-llm/README.txt\n{folder}b.txt\n{folder}\n{folder}c.txt\na.txt\n")
    assert read_haystack(tmp_path, order=str(listing)) == "b. c. a. "  # only lines in a folder of its name
    listing.write_text("b.txt\na.txt\n")
    with pytest.raises(UserError, match="1 present but not listed"):
        haystack_files(tmp_path, str(listing))
    with pytest.raises(UserError, match="not 'sorted', 'filesystem'"):
        haystack_files(tmp_path, "random")


def test_paper_haystack_reads_files_until_their_tokens_pass_the_longest_length(tiny_backend, tmp_path):
    tok = tiny_backend.tokenizer
    for name, words in (("a", 50), ("b", 50), ("c", 50)):
        (tmp_path / f"{name}.txt").write_text(" ".join([name] * words) + "\n")
    one = len(tok.encode("a " * 49 + "a\n", add_special_tokens=False))
    assert paper_haystack(tok, tmp_path, one + 1) == "".join(f"{n} " * 49 + f"{n}\n" for n in "ab")  # a, b: > 51
    assert paper_haystack(tok, tmp_path, 10**6).count("\n") == 3
    (tmp_path / "one.txt").write_text("\n  padded text.  \n")
    assert paper_haystack(tok, tmp_path / "one.txt", 100) == "padded text."  # a file: whole, stripped


def test_needle_from_cli_and_python_writes_cells_and_a_heatmap_deterministically(tiny_model_dir, tiny_backend,
                                                                                 tmp_path):
    main(["eval", "needle", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "cli"),
          "--lengths", "300,450", "--depths", "0,50,100", "--max-length", "1024", "--training-length", "300",
          "--scorer", "rouge"])  # the paper preset's own default, paper-rouge, is tested from Python
    cells = json.loads((tmp_path / "cli" / "needle.json").read_text())
    assert len(cells) == 6
    for cell in cells:
        assert {"length", "depth", "score", "prediction"} <= set(cell)
        assert cell["score"] == rouge_l_recall(cell["prediction"], ANSWER) and cell["scorer"] == "rouge-l-recall"
    image = matplotlib.image.imread(tmp_path / "cli" / "needle.png")
    assert image.shape[0] > 400 and image.shape[1] > 1000
    summary = json.loads((tmp_path / "cli" / "needle.summary.json").read_text())
    assert summary["preset"] == "paper" and summary["scorer"] == "rouge-l-recall"
    assert summary["grid"]["300"]["50"] == round(next(c["score"] for c in cells if c["id"] == "L300-D50"), 2)
    assert summary["model"]["native_length"] == 256 and summary["model"]["training_length"] == 300  # as given

    from_python = run_needle(tiny_backend, tmp_path / "py", lengths=[300, 450], depths=[0, 50, 100], scorer="rouge")
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


@needs_langchain
def test_judge_sends_langchains_labeled_score_string_prompt_and_parses_its_rating():
    replies = ["The answer matches the reference. Rating: [[7]]", "I think it is fine.", "Rating: [[ 7 ]]",
               "Rating: [[11]]", "[[10]] it is"]
    with fake_judge(replies) as (judge, requests):
        assert judge("What is the best thing to do in San Francisco?", "eat a sandwich", "a sandwich") == 7
        for _ in range(3):  # no brackets, spaces inside, beyond 10: LangChain's parser refuses each
            with pytest.raises(ValueError, match="rating"):
                judge("q", "r", "p")
        assert judge("q", "r", "p") == 10
    body = requests[0]
    assert body["temperature"] == 0 and body["model"] == "judge-model"
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are a helpful assistant."} and user["role"] == "user"
    prompt = user["content"]
    # the criteria as the paper's code writes them (a newline, 16-space indents), then LangChain's own text
    indent = "\n" + " " * 16
    assert ("following criteria:\naccuracy: " + indent + "Score 1: The answer is completely unrelated to the "
            "reference." + indent + "Score 3:") in prompt
    assert "Only respond with a numberical score\n[Ground truth]\neat a sandwich\n" in prompt
    assert "[Question]\nWhat is the best thing to do in San Francisco?\n\n" in prompt
    assert "[The Start of Assistant's Answer]\na sandwich\n[The End of Assistant's Answer]" in prompt


def test_judge_without_langchain_says_what_to_install_before_any_work(monkeypatch, tiny_backend, tmp_path):
    for name in ["langchain_classic", "langchain", *(n for n in sys.modules if n.startswith("langchain"))]:
        monkeypatch.setitem(sys.modules, name, None)  # an import of LangChain now fails, even one done before
    metrics.labeled_score_string.cache_clear()
    counting = FakeBackend(inner=tiny_backend)
    try:
        with pytest.raises(UserError, match="pip install langchain-classic"), fake_judge(["[[5]]"]) as (judge, _):
            run_needle(counting, tmp_path / "out", lengths=[300], depths=[0], scorer="judge", judge=judge)
    finally:
        metrics.labeled_score_string.cache_clear()
    assert counting.calls == [] and not (tmp_path / "out").exists()


@needs_langchain
def test_needle_judge_scores_each_cell_with_the_presets_question_and_reference(tiny_backend, tmp_path):
    with fake_judge(["Rating: [[3]]"]) as (judge, requests):
        summary = run_needle(tiny_backend, tmp_path, lengths=[300], depths=[0, 100], scorer="judge", judge=judge)
    cells = json.loads((tmp_path / "needle.json").read_text())
    assert [c["score"] for c in cells] == [3, 3] and summary["scorer"] == "judge" and summary["grid"]["300"]["0"] == 3
    prompt = requests[0]["messages"][-1]["content"]
    assert "[Question]\nWhat is the best thing to do in San Francisco?\nAnswer:\n\n" in prompt  # prompt.strip()
    assert "[Ground truth]\n" + NEEDLE.strip() + "\n" in prompt  # needle.strip()
    key = json.loads((tmp_path / "needle.key.json").read_text())
    assert key["settings"]["scorer"] == "judge" and key["settings"]["judge"] == "judge-model"


def test_the_scorer_and_preset_are_part_of_the_prediction_key(tiny_backend, tmp_path):
    run_needle(tiny_backend, tmp_path, lengths=[300], depths=[0])
    assert json.loads((tmp_path / "needle.key.json").read_text())["settings"]["scorer"] == "paper-rouge"
    with pytest.raises(ValueError, match="settings.scorer 'paper-rouge' -> 'rouge'"):
        run_needle(tiny_backend, tmp_path, lengths=[300], depths=[0], scorer="rouge")
    with pytest.raises(ValueError, match="settings.preset 'paper' -> 'original'"):
        run_needle(tiny_backend, tmp_path, preset="original", lengths=[300], depths=[0])
    with pytest.raises(ValueError, match="settings.haystack_order 'sorted' -> 'filesystem'"):
        run_needle(tiny_backend, tmp_path, lengths=[300], depths=[0], haystack_order="filesystem")
    with pytest.raises(ValueError, match="unknown needle scorer"):
        run_needle(tiny_backend, tmp_path / "x", lengths=[300], depths=[0], scorer="bleu")


# ---------------------------------------------------------------- parity with the paper's eval_needle.py
def test_parity_fixture_inputs_are_unchanged():
    script = load_maker("needle_parity_fixture")
    tokenizer_json = Path(shipped_model(PARITY["tokenizer"])) / "tokenizer.json"
    assert hashlib.sha256(tokenizer_json.read_bytes()).hexdigest() == PARITY["tokenizer_sha256"], \
        "tenfold/tiny-llama's tokenizer changed: regenerate the fixture with scripts/needle_parity_fixture.py"
    assert PARITY["runs"]["dir"]["lengths"] == script.DIR_RUN["lengths"]
    assert [r["prediction"] for r in PARITY["rouge"]] == script.PREDICTIONS


@pytest.mark.parametrize("run", ["dir", "file"])
def test_paper_preset_builds_the_papers_prompts_token_for_token(run, tmp_path):
    script, fixture = load_maker("needle_parity_fixture"), PARITY["runs"][run]
    paths = script.write_haystack(tmp_path)
    assert script.haystack_sha256(paths) == PARITY["haystack_sha256"], "regenerate the fixture"
    order = "sorted"
    if fixture["order"] is not None:  # replay the order glob gave where the fixture was made
        (tmp_path / "order.txt").write_text("\n".join(fixture["order"]) + "\n")
        order = str(tmp_path / "order.txt")
    tok = load_tokenizer(PARITY["tokenizer"])
    preset = replace(PRESETS["paper"], lengths=fixture["lengths"], depths=fixture["depths"])
    text = paper_haystack(tok, paths[run], max(preset.lengths), order)
    cases = build_cases(tok, text, preset)
    assert [(c["length"], c["depth"]) for c in cases] == [(c["length"], c["depth"]) for c in fixture["cases"]]
    cleaned = 0
    for case, reference in zip(cases, fixture["cases"]):
        [(_, ids)] = paper_prompt_ids(tok, text, case["length"], [case["depth"]], preset)
        assert ids == reference["input_ids"], case["id"]
        assert case["prompt"] == transformers4_decode(tok, reference["input_ids"])
        cleaned += case["prompt"] != tok.decode(ids, clean_up_tokenization_spaces=False)
        # The model's input: the paper's llama-3 template has no BOS and leaves it to the tokenizer, which for
        # Llama-3 adds <|begin_of_text|>; tiny-llama's adds none, its chat template writes it (as Llama-3's does).
        model_ids = render_prompt(tok, case["prompt"], chat=True)
        assert model_ids[0] == tok.bos_token_id
        assert script.ids_sha256(model_ids[1:]) == reference["model_input_sha256"], case["id"]
    assert cleaned > 0  # the haystacks hold what the space clean-up rewrites (" 's", " .")


def test_paper_rouge_and_judge_rubric_match_the_papers_code():
    for row in PARITY["rouge"]:
        assert rouge_l_f1(row["prediction"], NEEDLE) == pytest.approx(row["score"], abs=1e-6), row["prediction"]
    assert hashlib.sha256(json.dumps(JUDGE_CRITERIA).encode()).hexdigest() == PARITY["judge_criteria_sha256"]
    assert np.isclose(rouge_l_f1(NEEDLE, NEEDLE), 0.999999995)
