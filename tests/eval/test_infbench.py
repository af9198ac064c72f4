import copy
import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from fakes import FakeBackend
from fixture_makers import load_maker
from tenfold.eval.infbench import (
    build_cases,
    load_templates,
    run_infbench,
    score,
    summary_score,
    truncate_middle,
)
from tenfold.eval.runner import transformers4_decode

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "infbench_parity.json").read_text())
# InfiniteBench's src/prompt.py belongs to InfiniteBench: a copy in the project's ../shared, where there is one
SHARED_PROMPTS = ROOT.parent / "shared" / "benchmarks" / "infbench" / "prompt.py"

# A prompt.py in InfiniteBench's layout, written by the test (the real one is downloaded at run time).
PROMPT_PY = '''
gpt4_templates = {"longbook_qa_eng": "G {context} Q {question}", "longbook_sum_eng": "G {context}"}
yarn_mistral_templates = {
    "longbook_sum_eng": "Sum the book.\\n\\n{context}\\n\\nSummary:",  # noqa
    "longbook_qa_eng": "Read the book.\\n\\n{context}\\n\\nQuestion: {question}\\nAnswer:",
}
'''
WORDS = "the red fox paints two blue doors . anna has a green owl . day 3 : the gold hen hides one cup .".split()


def _write(tmp_path):
    (tmp_path / "prompt.py").write_text(PROMPT_PY)
    data = tmp_path / "data"
    data.mkdir()
    for task, answer in (("longbook_qa_eng", ["two blue doors"]), ("longbook_sum_eng", ["the fox paints doors ."])):
        with open(data / f"{task}.jsonl", "w") as f:
            for i in range(2):
                context = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(400))
                f.write(json.dumps({"id": i, "context": context, "input": f"what does the fox paint {i} ?",
                                    "answer": answer, "options": []}) + "\n")
    return tmp_path / "prompt.py", data


def test_templates_are_read_as_literals_from_prompt_py(tmp_path):
    path, _ = _write(tmp_path)
    assert load_templates(path)["longbook_qa_eng"] == "Read the book.\n\n{context}\n\nQuestion: {question}\nAnswer:"
    assert load_templates(path, "gpt4")["longbook_sum_eng"] == "G {context}"
    with pytest.raises(ValueError, match="claude2_templates"):
        load_templates(path, "claude2")


def test_truncation_keeps_both_ends_with_or_without_the_bos(tiny_backend):
    tok = tiny_backend.tokenizer

    def decode(ids):
        return transformers4_decode(tok, ids, skip_special_tokens=True)

    text = "book start . " + " ".join(WORDS * 30) + " question end ?"
    ids = tok(text)["input_ids"]
    cut = truncate_middle(tok, text, 101, "official")
    assert cut == decode(ids[:50] + ids[-50:])  # 2 * (101 // 2) tokens, as both references keep
    assert cut.startswith("book start.") and cut.endswith("question end?")  # transformers 4.x's clean-up
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert truncate_middle(tok, text, 101, "paper") == decode(ids[:50]) + decode(ids[-50:])
    assert truncate_middle(tok, "short , text", 101, "paper") == "short , text"  # uncut: as it was
    assert truncate_middle(tok, "short , text", 101, "official") == "short, text"  # decoded all the same


def test_summary_metrics_of_the_two_presets():
    prediction, references = "The fox paints doors.\nAnna sleeps.", ["a zebra", "the fox paints two doors\nanna sleeps"]
    google = rouge_scorer.RougeScorer(["rougeLsum"])  # lowercased [a-z0-9] tokens, LCS over "\n" sentences
    best = google.score(references[1], prediction)["rougeLsum"].fmeasure
    assert (summary_score(prediction, references, "official") == best
            > google.score(references[0], prediction)["rougeLsum"].fmeasure)
    assert summary_score("", references, "paper") == 0.0  # the rouge package raises; scored 0
    # scored against the best reference
    assert summary_score("anna sleeps", ["a zebra", "anna sleeps"], "paper") == pytest.approx(1, abs=1e-7)


def test_infbench_end_to_end_and_resume(tiny_backend, tmp_path):
    prompts, data = _write(tmp_path)
    summary = run_infbench(tiny_backend, tmp_path / "out", truncate_length=150, prompts=prompts, data_dir=data, limit=1)
    records = json.loads((tmp_path / "out" / "infbench.json").read_text())
    assert [r["task"] for r in records] == ["longbook_qa_eng", "longbook_sum_eng"]
    assert summary["scores"]["longbook_qa_eng"] == 100 * records[0]["score"]
    assert summary["preset"] == "paper" and summary["truncate_length"] == 150
    counting = FakeBackend(inner=tiny_backend)
    again = run_infbench(counting, tmp_path / "out", truncate_length=150, prompts=prompts, data_dir=data, limit=1)
    assert counting.calls == [] and again["scores"] == summary["scores"]


def test_cli_infbench(tiny_model_dir, tmp_path, capsys):
    from tenfold.cli import main

    prompts, data = _write(tmp_path)
    main(["eval", "infbench", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"), "--max-length",
          "4096", "--tasks", "longbook_qa_eng", "--truncate-length", "150", "--prompts", str(prompts), "--data-dir",
          str(data), "--preset", "official"])
    summary = json.loads((tmp_path / "out" / "infbench.summary.json").read_text())
    assert list(summary["scores"]) == ["longbook_qa_eng"] and summary["preset"] == "official"
    assert "infbench: score" in capsys.readouterr().out


# ---------------------------------------------------------------- parity with the reference code (both presets)

def _maker():
    module = load_maker("infbench_parity_fixture")
    assert module.sha256(module.build_records()) == FIXTURE["records_sha256"], \
        "the records changed: regenerate the fixture with scripts/infbench_parity_fixture.py"
    assert module.sha256(module.extra_predictions()) == FIXTURE["extra_sha256"]
    return module


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """The maker, its model behind tenfold's backend (the paper's "llama-3" template), and the data and
    prompt.py of its records: the templates as the fixture holds them, in InfiniteBench's layout."""
    from tenfold.generation import load_backend

    maker, folder = _maker(), tmp_path_factory.mktemp("infbench-parity")
    backend = load_backend(str(maker.longbench.write_model(folder / "model")), chat_template="llama-3",
                           max_length=2048)
    templates = {task: backend.tokenizer.decode(ids) for task, ids in FIXTURE["template_ids"].items()}
    (folder / "prompt.py").write_text(f"yarn_mistral_templates = {templates!r}\n")
    for task, records in maker.build_records().items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return maker, backend, folder, templates


def _rendered(tokenizer, preset: str, task: str, record: dict, template: str) -> list[int]:
    from tenfold.generation import render_prompt

    (case,) = build_cases(tokenizer, task, [record], template, FIXTURE["truncate_length"], preset)
    return render_prompt(tokenizer, case["prompt"], preset == "paper")


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_each_preset_cuts_and_renders_the_prompt_token_for_token_as_its_reference(parity, preset):
    maker, backend, _, templates = parity
    no_clean_up = copy.deepcopy(backend.tokenizer)  # as this transformers decodes (no space clean-up for BPE)
    no_clean_up.init_kwargs["clean_up_tokenization_spaces"] = False
    with_bos = maker.bos_tokenizer(backend.tokenizer)  # counts the BOS where official does, as Llama-3's
    for task, records in maker.build_records().items():
        for record, expected in zip(records, FIXTURE[preset]["cases"][task], strict=True):
            assert _rendered(backend.tokenizer, preset, task, record, templates[task]) == \
                expected["input_ids_clean_up"], (task, record["id"])
            assert _rendered(no_clean_up, preset, task, record, templates[task]) == expected["input_ids"]
            assert _rendered(with_bos, preset, task, record, templates[task]) == expected["input_ids_bos"]
    cases = [c for rows in FIXTURE[preset]["cases"].values() for c in rows]
    assert any(c["input_ids"] != c["input_ids_clean_up"] for c in cases)  # the clean-up decides some
    assert any(len(c["input_ids"]) < len(cases[-1]["input_ids"]) - 50 for c in cases)  # and some are not cut


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_each_preset_generates_and_scores_what_its_reference_did(parity, preset, tmp_path, monkeypatch):
    maker, backend, folder, templates = parity
    generated, generate_ids = {}, backend.generate_ids

    def recording(prompts, *args, **kwargs):  # the new ids of run_infbench's batches (left padded)
        rows = generate_ids(prompts, *args, **kwargs)
        generated.update(zip(prompts, rows))
        return rows

    monkeypatch.setattr(backend, "generate_ids", recording)
    summary = run_infbench(backend, tmp_path, preset=preset, truncate_length=FIXTURE["truncate_length"],
                           prompts=folder / "prompt.py", data_dir=folder)
    prompts = [case["prompt"] for task, records in maker.build_records().items() for case in
               build_cases(backend.tokenizer, task, records, templates[task], FIXTURE["truncate_length"], preset)]
    records = json.loads((tmp_path / "infbench.json").read_text())
    expected = [c for task in maker.TASKS for c in FIXTURE[preset]["cases"][task]]
    assert [generated[prompt] for prompt in prompts] == [c["output_ids"] for c in expected]
    assert [r["prediction"] for r in records] == [c["prediction"] for c in expected]
    assert [r["score"] for r in records] == pytest.approx([c["score"] for c in expected], abs=1e-6)
    for task, value in FIXTURE[preset]["scores"].items():
        assert summary["scores"][task] / 100 == pytest.approx(value, abs=1e-6)
        if preset == "paper":  # main()'s round(mean, 4)
            assert round(summary["scores"][task] / 100, 4) == FIXTURE["paper"]["scores_rounded"][task]
    assert any(c["score"] > 0 for c in expected) and {c["output_ids"][-1] for c in expected} >= {4}


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_metrics_score_the_edge_cases_as_the_references(preset):
    """Empty, multi-reference, long and unicode predictions: the value each reference's metric gave; where
    the paper's code crashes, tenfold's documented choice (0 for no words, the best of several references)."""
    maker = _maker()
    for extra, expected in zip(maker.extra_predictions(), FIXTURE["extra"], strict=True):
        task, prediction, answers = extra["task"], extra["prediction"], extra["answers"]
        ours = score(task, prediction, answers, preset)
        if isinstance(expected[preset], float):
            assert ours == pytest.approx(expected[preset], abs=1e-6), (task, prediction[:30], answers)
        elif expected[preset] == {"error": "ValueError"}:  # the rouge package: "Hypothesis is empty."
            assert ours == 0.0 and not prediction.replace(".", "").strip()
        else:
            assert expected[preset] == {"error": "AssertionError"} and len(answers) > 1  # several references
            assert ours == max(score(task, prediction, [a], preset) for a in answers)
    crashes = [e["paper"] for e in FIXTURE["extra"] if isinstance(e["paper"], dict)]
    assert len(crashes) == 3 and all(isinstance(e["official"], float) for e in FIXTURE["extra"])


def test_predictions_are_recorded_and_scored_as_transformers_4_decoded_them(parity, tmp_path):
    """The references' batch_decode cleaned up spaces (" ." -> "."): what the tokenizer gives is cleaned so."""
    maker, backend, folder, _ = parity
    decode_4x_ref = maker.Transformers4Decode(backend.tokenizer)
    ids = backend.tokenizer(" the door , it 's 9 . blue ! fou", add_special_tokens=False)["input_ids"]
    fake = FakeBackend(answer=lambda _prompt: backend.tokenizer.decode(ids, skip_special_tokens=True),
                       tokenizer=backend.tokenizer, max_length=2048)
    run_infbench(fake, tmp_path, tasks=["longbook_qa_eng"], truncate_length=FIXTURE["truncate_length"],
                 prompts=folder / "prompt.py", data_dir=folder, limit=2)
    records = json.loads((tmp_path / "infbench.json").read_text())
    expected = decode_4x_ref.batch_decode([ids], skip_special_tokens=True)[0]
    assert expected == " the door, it's 9. blue! fou" and {r["prediction"] for r in records} == {expected}
    # "door its 9 blue fou" against "bel door 9 blue" (the better of the two answers): P 3/5, R 3/4
    assert records[1]["score"] == pytest.approx(2 / 3)


@pytest.mark.skipif(not SHARED_PROMPTS.is_file(), reason=f"InfiniteBench's prompt.py is not in {SHARED_PROMPTS}")
def test_the_fixture_templates_are_infinitebenchs_prompt_py(parity):
    templates = load_templates(SHARED_PROMPTS)
    assert {task: templates[task] for task in parity[3]} == parity[3]
