import copy
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from tokenizers import processors

from fakes import FakeBackend
from fixture_makers import load_maker
from tenfold.errors import UserError
from tenfold.eval import longbench
from tenfold.eval.longbench import (
    ENGLISH,
    build_cases,
    default_truncate_length,
    generation_controls,
    run_longbench,
    score,
    score_e,
    summarize,
    truncate_middle,
)
from tenfold.eval.longbench_metrics import classification_score, code_sim_score, qa_f1_score, rouge_score
from tenfold.generation import GenerationControls

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT.parent / "shared" / "benchmarks" / "longbench"  # LongBench's own configs, for tests only
# LongBench's prompts belong to LongBench: the project's ../shared holds a copy for tests; a clone without it
# skips the tests that read them.
needs_longbench_config = pytest.mark.skipif(not (CONFIG_DIR / "dataset2prompt.json").is_file(),
                                            reason=f"LongBench's config files are not in {CONFIG_DIR}")
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "longbench_official_scores.json").read_text())


def _parity_cases():
    module = load_maker("longbench_parity_fixture")
    cases = module.build_cases()
    assert module.cases_hash(cases) == FIXTURE["cases_sha256"], \
        "the parity cases changed: regenerate the fixture with scripts/longbench_parity_fixture.py"
    return cases


def _same(ours, official):
    return (official is None and math.isnan(ours)) or ours == official


# ---------------------------------------------------------------- parity with LongBench's eval.py

def test_every_case_scores_what_the_official_eval_py_gave():
    cases = _parity_cases()
    assert {c["dataset"] for c in cases} == set(longbench.DATASET_METRIC)  # all 21 datasets, every metric
    mismatches = [(i, c["dataset"], c["pred"][:40], ours, official)
                  for i, (c, official) in enumerate(zip(cases, FIXTURE["per_case"]))
                  if (ours := score(c["dataset"], [c["pred"]], [c["answers"]], c["all_classes"])) != official]
    assert not mismatches


def test_dataset_and_longbench_e_scores_equal_the_official_eval_py():
    by_dataset = defaultdict(list)
    for case in _parity_cases():
        by_dataset[case["dataset"]].append(case)
    for dataset, rows in by_dataset.items():
        preds, answers = [r["pred"] for r in rows], [r["answers"] for r in rows]
        all_classes, lengths = rows[-1]["all_classes"], [r["length"] for r in rows]
        assert score(dataset, preds, answers, all_classes) == FIXTURE["per_dataset"][dataset], dataset
        ours = score_e(dataset, preds, answers, lengths, all_classes)
        official = FIXTURE["per_dataset_e"][dataset]
        assert ours.keys() == official.keys() and all(_same(ours[b], official[b]) for b in ours), dataset


# ---------------------------------------------------------------- the rules, one by one

def test_first_line_rule_applies_to_trec_triviaqa_samsum_lsht_only():
    pred, answers = "\n\nParis\nLondon", [["London"]]
    assert score("triviaqa", [pred], answers, None) == 0.0  # only "Paris" is scored
    assert score("narrativeqa", [pred], answers, None) == 66.67  # the whole text is scored
    assert score("samsum", ["\ncat sat\ndog ran"], [["dog ran"]], None) == 0.0
    assert score("gov_report", ["\ncat sat\ndog ran"], [["dog ran"]], None) > 0


def test_max_over_ground_truths_and_rounding():
    assert score("hotpotqa", ["John went"], [["Mary", "John"]], None) == 66.67
    assert score("hotpotqa", ["John", "nobody"], [["John"], ["John"]], None) == 50.0


def test_rouge_keeps_the_rouge_package_behaviour():
    assert rouge_score("", "the budget") == 0.0  # the package raises, the official code scores 0
    assert rouge_score("the budget", "the budget") == pytest.approx(2 / (2 + 1e-8))  # F has a 1e-8 term, never 1
    long_prediction = " ".join(f"w{i}" for i in range(1200))  # the recursive LCS overflows: silently 0
    assert rouge_score(long_prediction, "alpha w3") == 0.0
    assert rouge_score(" ".join(f"w{i}" for i in range(900)), "alpha w3") > 0


def test_code_similarity_is_fuzzywuzzy_over_difflib_not_levenshtein():
    # python-Levenshtein (and rapidfuzz) give 72 here; LongBench's requirements give difflib's 62.
    assert code_sim_score("for (int i = 0; i < n; i++) {", "for (int j = n; j > 0; j--) {") == 0.62
    assert code_sim_score("# comment\n`x`\nreturn y", "return y") == 1.0  # first line without ` # //
    assert code_sim_score("", "") == 1.0 and code_sim_score("x", "") == 0.0


def test_classification_keeps_the_official_list_mutation_quirk():
    classes = ["财经", "新闻", "财经新闻"]
    assert classification_score("财经新闻", "财经新闻", all_classes=classes) == 0.5  # not 1.0
    assert classification_score("Human being", "Human being", all_classes=["Human", "Human being"]) == 1.0


def test_english_f1_normalizes_case_punctuation_and_articles():
    assert qa_f1_score("The Paris!", "paris") == 1.0
    assert qa_f1_score("an", "the") == 0


def test_longbench_e_buckets_by_the_length_field_and_empty_is_nan():
    result = score_e("passage_count", ["1", "2", "3"], [["1"], ["2"], ["0"]], [3999, 4000, 7999], None)
    assert result["0-4k"] == 100.0 and result["4-8k"] == 50.0 and math.isnan(result["8k+"])


def test_presets_average_categories_or_english_datasets():
    scores = {d: 10.0 for d in ENGLISH}
    scores.update({"lcc": 70.0, "repobench-p": 70.0})  # Code: 2 datasets of 16, 1 category of 6
    official, paper = summarize(scores, "official"), summarize(scores, "paper")
    assert official["categories"]["Code"] == 70.0 and official["categories"]["Few-shot"] == 10.0
    assert official["avg"] == 20.0 and official["preset"] == "official"  # (5 * 10 + 70) / 6
    assert paper["avg"] == 17.5 and paper["preset"] == "paper"  # (14 * 10 + 2 * 70) / 16
    assert list(official["categories"]) == ["Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot",
                                            "Synthetic", "Code"]


# ---------------------------------------------------------------- the runner on a tiny model

WORDS = "the red fox paints two blue doors . anna has a green owl . day 3 : the gold hen hides one cup .".split()


def _write_data(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in ("narrativeqa", "trec", "lcc", "passage_count"):
        with open(folder / f"{dataset}.jsonl", "w") as f:
            for i in range(n):
                context = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(60 + 150 * i))  # the last ones get cut
                record = {"input": f"what does the fox paint {i} ?", "context": context, "answers": ["two blue doors"],
                          "length": 60 + 150 * i, "dataset": dataset, "language": "en", "_id": f"id{i}",
                          "all_classes": ["Entity", "Location"] if dataset == "trec" else None}
                f.write(json.dumps(record) + "\n")
    return folder


@pytest.fixture
def backend(tiny_backend, monkeypatch):
    monkeypatch.setattr(tiny_backend, "max_length", 1024)  # a truncate length of 2000 does not fit
    return tiny_backend


def test_truncate_middle_keeps_first_and_last_half_of_the_tokens(backend):
    tok = copy.deepcopy(backend.tokenizer)  # one that adds a BOS, as Llama's do: pred.py counts it
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
    prompt = "question first . " + " ".join(WORDS * 20) + " question last ?"
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    halves = [tok.decode(ids[:50], skip_special_tokens=True), tok.decode(ids[-50:], skip_special_tokens=True)]
    assert truncate_middle(tok, prompt, 101, clean_up_spaces="no") == "".join(halves)
    cut = truncate_middle(tok, prompt, 101)  # each half as transformers 4 decoded it: " ." -> "."
    assert cut == "".join(tok.clean_up_tokenization(half) for half in halves) != "".join(halves)
    assert cut.startswith("question first.") and cut.endswith("question last?")
    assert truncate_middle(tok, "short prompt", 101) == "short prompt"


@needs_longbench_config
def test_longbench_end_to_end_with_chat_rule_lengths_and_resume(backend, tmp_path):
    data = _write_data(tmp_path / "data")
    recording = FakeBackend(inner=backend)
    summary = run_longbench(recording, tmp_path / "out", datasets=["narrativeqa", "trec", "lcc", "passage_count"],
                            preset="paper", truncate_length=120, data_dir=data, config_dir=CONFIG_DIR)
    maxlen = json.loads((CONFIG_DIR / "dataset2maxlen.json").read_text())
    calls = {(call["max_new_tokens"], call["chat"]) for call in recording.calls}
    assert calls == {(maxlen["narrativeqa"], True), (maxlen["trec"], False), (maxlen["lcc"], False),
                     (maxlen["passage_count"], True)}
    prompts = recording.prompts
    assert len(prompts) == 12 and all(len(backend.tokenizer(p)["input_ids"]) <= 121 for p in prompts)
    assert any(p.startswith("Please complete the code given below.") for p in prompts)

    records = json.loads((tmp_path / "out" / "longbench.json").read_text())
    assert len(records) == 12
    for dataset in ("narrativeqa", "trec", "lcc", "passage_count"):
        rows = [r for r in records if r["dataset"] == dataset]
        expected = score(dataset, [r["prediction"] for r in rows], [r["answers"] for r in rows],
                         rows[-1]["all_classes"])
        assert summary["scores"][dataset] == expected
    assert summary["preset"] == "paper" and summary["score"] == summary["avg"]
    assert summary["avg"] == round(sum(summary["scores"].values()) / 4, 2)
    assert json.loads((tmp_path / "out" / "longbench.summary.json").read_text()) == json.loads(json.dumps(summary))

    # a run killed after 7 cases, started again, generates only the 5 it lacks and ends the same
    lines = (tmp_path / "out" / "longbench.predictions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "out" / "longbench.predictions.jsonl").write_text("".join(lines[:7]) + lines[7][:10])
    recording.calls.clear()
    again = run_longbench(recording, tmp_path / "out", datasets=["narrativeqa", "trec", "lcc", "passage_count"],
                          preset="paper", truncate_length=120, data_dir=data, config_dir=CONFIG_DIR)
    assert len(recording.prompts) == 5
    assert again["scores"] == summary["scores"]


@needs_longbench_config
def test_longbench_e_and_bad_inputs(backend, tmp_path):
    data = _write_data(tmp_path / "data")
    for path in data.glob("*.jsonl"):
        path.rename(data / f"{path.stem}_e.jsonl")
    summary = run_longbench(backend, tmp_path / "out", datasets=["trec", "passage_count"], longbench_e=True,
                            truncate_length=120, data_dir=data, config_dir=CONFIG_DIR)
    assert set(summary["scores"]["trec"]) == {"0-4k", "4-8k", "8k+"} and summary["benchmark"] == "longbench_e"
    assert (tmp_path / "out" / "longbench_e.predictions.jsonl").is_file()
    with pytest.raises(ValueError, match="narrativeqa"):  # not a LongBench-E dataset
        run_longbench(backend, tmp_path / "out", datasets=["narrativeqa"], longbench_e=True, truncate_length=120,
                      data_dir=data, config_dir=CONFIG_DIR)
    with pytest.raises(UserError, match="hotpotqa"):
        run_longbench(backend, tmp_path / "out2", datasets=["hotpotqa"], truncate_length=120, data_dir=data,
                      config_dir=CONFIG_DIR)
    with pytest.raises(ValueError, match="exceeds"):  # refused before any work
        run_longbench(backend, tmp_path / "out3", datasets=["trec"], truncate_length=2000, data_dir=data,
                      config_dir=CONFIG_DIR)


@needs_longbench_config
def test_build_cases_fill_the_official_prompt(backend):
    prompts = json.loads((CONFIG_DIR / "dataset2prompt.json").read_text())
    record = {"input": "Q?", "context": "C.", "answers": ["a"], "all_classes": None, "length": 2, "_id": "x"}
    (case,) = build_cases(backend.tokenizer, "narrativeqa", [record], prompts["narrativeqa"], 1000)
    assert case["prompt"] == prompts["narrativeqa"].format(context="C.", input="Q?")
    assert "asconcisely" in case["prompt"] and case["id"] == "narrativeqa/x"


@needs_longbench_config
def test_cli_longbench(tiny_model_dir, tmp_path, capsys):
    from tenfold.cli import main

    data = _write_data(tmp_path / "data", n=2)
    main(["eval", "longbench", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"),
          "--max-length", "1024", "--datasets", "trec,passage_count", "--truncate-length", "120",
          "--data-dir", str(data), "--config-dir", str(CONFIG_DIR), "--preset", "paper"])
    summary = json.loads((tmp_path / "out" / "longbench.summary.json").read_text())
    assert set(summary["scores"]) == {"trec", "passage_count"} and summary["preset"] == "paper"
    assert "longbench: score" in capsys.readouterr().out


@needs_longbench_config
def test_each_preset_generates_as_its_code_does_and_is_part_of_the_key(backend, tmp_path):
    data = _write_data(tmp_path / "data")
    datasets = ["narrativeqa", "trec", "lcc", "passage_count"]
    by_preset = {}
    for preset in ("paper", "official"):
        recording = FakeBackend(inner=backend)
        run_longbench(recording, tmp_path / preset, datasets=datasets, preset=preset, truncate_length=120,
                      data_dir=data, config_dir=CONFIG_DIR)
        by_preset[preset] = {call["prompts"][0]: call["controls"] for call in recording.calls}
    newline_stop = GenerationControls(stop_tokens="\n")
    no_empty_start = GenerationControls(stop_tokens="\n", suppress_first="\n", suppress_first_end=True)
    # the paper: every dataset stops at the "\n" token; narrativeqa, one of the seven, may not start with it
    assert set(by_preset["paper"].values()) == {newline_stop, no_empty_start}
    assert [generation_controls("paper", d) for d in datasets] == [no_empty_start] + [newline_stop] * 3
    assert set(by_preset["official"].values()) == {GenerationControls()}  # pred.py: the end tokens only...
    assert generation_controls("official", "samsum") == no_empty_start  # ...but samsum's min_length and "\n"
    assert sorted(d for d in ENGLISH if generation_controls("paper", d).suppresses) == sorted(
        ["2wikimqa", "hotpotqa", "musique", "multifieldqa_en", "qasper", "narrativeqa", "samsum"])
    with pytest.raises(ValueError, match="settings.preset 'paper' -> 'official'"):  # the preset is in the key
        run_longbench(backend, tmp_path / "paper", datasets=datasets, preset="official", truncate_length=120,
                      data_dir=data, config_dir=CONFIG_DIR)
    with pytest.raises(ValueError, match="settings.clean_up_spaces 'tokenizer' -> 'no'"):  # so is the clean-up
        run_longbench(backend, tmp_path / "paper", datasets=datasets, preset="paper", truncate_length=120,
                      data_dir=data, config_dir=CONFIG_DIR, clean_up_spaces="no")
    with pytest.raises(ValueError, match="use one of tokenizer, yes, no"):
        run_longbench(backend, tmp_path / "x", datasets=datasets, truncate_length=120, data_dir=data,
                      config_dir=CONFIG_DIR, clean_up_spaces="maybe")


def test_the_default_prompt_budget_is_the_papers_31500_or_longbenchs_convention_for_a_short_model():
    assert default_truncate_length("paper", 131_072) == 31_500 == default_truncate_length("paper", 32_768)
    assert default_truncate_length("paper", 8192) == 7_500 == default_truncate_length("official", 8192)
    assert default_truncate_length("official", 4096) == 3_500 and default_truncate_length("official", 32_768) == 31_500
    with pytest.raises(UserError, match="--truncate-length"):
        default_truncate_length("paper", 1024)


# ---------------------------------------------------------------- the paper preset = FlagEmbedding's eval_longbench.py

def _reference_records(fixture: dict) -> list[dict]:
    inputs = load_maker("longbench_fixture_inputs")
    records = inputs.build_records()
    assert inputs.records_sha256(records) == fixture["records_sha256"] and fixture["model"] == inputs.MODEL, \
        "the records changed: regenerate the fixtures with scripts/longbench_*_parity_fixture.py"
    assert inputs.model_sha256() == fixture["model_sha256"], "tenfold/tiny-llama changed: regenerate the fixtures"
    return records


def _run_like_the_reference(backend, preset: str, records: list[dict], fixture: dict, tmp_path: Path,
                            monkeypatch) -> None:
    """run_longbench on the reference's records: every case's model input ids, new ids and stored prediction
    are the reference's, token for token."""
    from tenfold.generation import render_prompt

    data = tmp_path / "data"
    data.mkdir()
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    for dataset in datasets:  # LongBench's <name>.jsonl
        lines = [json.dumps(r) + "\n" for r in records if r["dataset"] == dataset]
        (data / f"{dataset}.jsonl").write_text("".join(lines))
    new_ids, generate_ids = {}, backend.generate_ids  # (prompt, chat) -> the new ids of run_longbench's batches

    def recording(prompts, max_new_tokens, chat=True, *args, **kwargs):
        rows = generate_ids(prompts, max_new_tokens, chat, *args, **kwargs)
        new_ids.update(((prompt, chat), row) for prompt, row in zip(prompts, rows))
        return rows

    monkeypatch.setattr(backend, "generate_ids", recording)
    run_longbench(backend, tmp_path / "run", datasets=datasets, preset=preset,
                  truncate_length=fixture["max_length"], data_dir=data, config_dir=CONFIG_DIR)
    stored = {r["id"]: r["prediction"] for r in json.loads((tmp_path / "run" / "longbench.json").read_text())}
    prompts = json.loads((CONFIG_DIR / "dataset2prompt.json").read_text())
    built = []
    for record, expected in zip(records, fixture["cases"], strict=True):
        dataset, chat = record["dataset"], record["dataset"] not in longbench.NO_CHAT_TEMPLATE
        (case,) = build_cases(backend.tokenizer, dataset, [record], prompts[dataset], fixture["max_length"])
        assert render_prompt(backend.tokenizer, case["prompt"], chat) == expected["input_ids"], case["id"]
        assert new_ids[case["prompt"], chat] == expected["output_ids"], case["id"]
        assert stored[case["id"]] == expected["prediction"], case["id"]
        built.append((case["prompt"], chat))
    assert sorted(set(built)) == sorted(new_ids)  # run_longbench generated from these prompts (some cut alike)


def _prompts_cleaned_up(backend, records: list[dict], fixture: dict) -> list[bool]:
    """Per case: whether the cut decoded without the space clean-up gives other input ids than the reference's."""
    from tenfold.generation import render_prompt

    prompts = json.loads((CONFIG_DIR / "dataset2prompt.json").read_text())
    changed = []
    for record, expected in zip(records, fixture["cases"], strict=True):
        dataset = record["dataset"]
        (case,) = build_cases(backend.tokenizer, dataset, [record], prompts[dataset], fixture["max_length"], "no")
        ids = render_prompt(backend.tokenizer, case["prompt"], dataset not in longbench.NO_CHAT_TEMPLATE)
        changed.append(ids != expected["input_ids"])
    return changed


@needs_longbench_config
def test_paper_preset_gives_the_prompts_and_predictions_of_the_papers_eval_longbench_py(tmp_path, monkeypatch):
    from tenfold.generation import load_backend

    fixture = json.loads((ROOT / "tests" / "fixtures" / "longbench_paper_parity.json").read_text())
    records = _reference_records(fixture)
    prompts = json.loads((CONFIG_DIR / "dataset2prompt.json").read_text())
    assert hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest() == fixture["prompts_sha256"]
    model = load_maker("longbench_fixture_inputs").write_model(tmp_path / "model")
    backend = load_backend(str(model), chat_template="llama-3", max_length=1024)
    _run_like_the_reference(backend, "paper", records, fixture, tmp_path, monkeypatch)
    # the space clean-up of the paper's transformers 4.39.3 decides prompts and predictions here
    cleaned = [c["clean_up_changes_prompt"] for c in fixture["cases"]]
    assert 0 < sum(cleaned) < len(cleaned) and any(c["clean_up_changes_prediction"] for c in fixture["cases"])
    assert _prompts_cleaned_up(backend, records, fixture) == cleaned
    ends = {tuple(c["output_ids"][-1:]) for c in fixture["cases"]}
    assert {(4,), (204,)} <= ends  # an end token and the "\n" token each end some answers


# ---------------------------------------------------------------- the official preset = LongBench's pred.py

# pred.py's build_chat for each model name of the fixture, as tenfold's --chat-template renders it
PRED_PY_TEMPLATES = {"tiny-llama": "none", "llama2-7b-chat-4k": "longbench-llama2"}


@needs_longbench_config
@pytest.mark.parametrize("model_name, chat_template", PRED_PY_TEMPLATES.items())
def test_official_preset_gives_the_prompts_and_predictions_of_longbenchs_pred_py(model_name, chat_template, tmp_path,
                                                                               monkeypatch):
    from tenfold.generation import load_backend

    fixture = json.loads((ROOT / "tests" / "fixtures" / "longbench_official_parity.json").read_text())
    records = _reference_records(fixture)
    for name in ("dataset2prompt.json", "dataset2maxlen.json"):
        assert hashlib.sha256((CONFIG_DIR / name).read_bytes()).hexdigest() == fixture["sha256"][f"config/{name}"]
    assert fixture["model_names"] == list(PRED_PY_TEMPLATES)
    cases = [c for c in fixture["cases"] if c["model_name"] == model_name]
    model = load_maker("longbench_fixture_inputs").write_model(tmp_path / "model")
    backend = load_backend(str(model), chat_template=chat_template, max_length=1024)
    _run_like_the_reference(backend, "official", records, {**fixture, "cases": cases}, tmp_path, monkeypatch)
    # what decides these cases: the clean-up of pred.py's transformers 4.31.0, in prompts and predictions;
    # samsum's stop at the "\n" token (4: <|eot_id|>, 204: "\n"), which the other datasets generate past
    assert any(_prompts_cleaned_up(backend, records, {**fixture, "cases": cases}))
    assert any(backend.tokenizer.decode(c["output_ids"], skip_special_tokens=True) != c["prediction"] for c in cases)
    samsum, others = [c for c in cases if c["dataset"] == "samsum"], [c for c in cases if c["dataset"] != "samsum"]
    assert {c["output_ids"][-1] for c in samsum} == {4, 204} and any(204 in c["output_ids"][:-1] for c in others)
