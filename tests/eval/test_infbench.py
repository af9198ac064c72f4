import json

import pytest
from rouge_score import rouge_scorer

from fakes import FakeBackend
from tenfold.eval.infbench import load_templates, run_infbench, summary_score, truncate_middle

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
    text = "book start . " + " ".join(WORDS * 30) + " question end ?"
    for count_bos in (False, True):
        ids = tok(text, add_special_tokens=count_bos)["input_ids"]
        cut = truncate_middle(tok, text, 101, count_bos)
        assert cut == tok.decode(ids[:50] + ids[-51:], skip_special_tokens=True)
        assert cut.endswith("question end ?")


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
