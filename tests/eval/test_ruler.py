import hashlib
import importlib.util
import json
from importlib.metadata import version
from pathlib import Path

import nltk
import pytest
import yaml

from fakes import FakeBackend
from fixture_makers import load_maker
from tenfold.cli import main
from tenfold.errors import UserError
from tenfold.eval import ruler
from tenfold.eval.metrics import string_match_all
from tenfold.eval.ruler import (
    METRICS,
    RULER_COMMIT,
    TASKS,
    chat_frame,
    load_config,
    load_sources,
    postprocess,
    read_qa,
    run_ruler,
    string_match_part,
    summarize,
    task_samples,
    task_score,
    token_counter,
)
from tenfold.eval.ruler_tasks import SortedPairs, read_hotpotqa, read_squad

ROOT = Path(__file__).resolve().parents[2]
PARITY = json.loads((ROOT / "tests" / "fixtures" / "ruler_parity.json").read_text())
CONFIG = PARITY["config"]  # RULER's task definitions as load_config read them from RULER's files (test data)
HAS_WONDERWORDS = importlib.util.find_spec("wonderwords") is not None
needs_wonderwords = pytest.mark.skipif(not HAS_WONDERWORDS, reason="RULER's word lists come from wonderwords: "
                                                                    "pip install wonderwords")


def fixture_script():
    module = load_maker("ruler_parity_fixture")
    assert module.inputs_hash() == PARITY["inputs_sha256"], \
        "the parity inputs changed: regenerate the fixture with scripts/ruler_parity_fixture.py"
    return module


def write_ruler_checkout(root: Path, config: dict, data: bool = True) -> Path:
    """A folder in NVIDIA/RULER's layout holding `config` (and, with `data`, the tiny essay, SQuAD and HotpotQA
    files where RULER's download scripts put them)."""
    scripts = root / "scripts"
    (scripts / "data" / "synthetic" / "json").mkdir(parents=True)
    (scripts / "eval" / "synthetic").mkdir(parents=True)
    (scripts / "synthetic.yaml").write_text(yaml.safe_dump(config["tasks"], sort_keys=False))
    (scripts / "data" / "synthetic" / "constants.py").write_text(f"TASKS = {config['templates']!r}\n")
    strings = config["strings"]
    (scripts / "data" / "synthetic" / "niah.py").write_text(
        f"needle = {strings['needle']!r}\nif args.type_haystack == 'essay':\n    haystack = essay.split(' ')\n"
        f"elif args.type_haystack == 'noise':\n    haystack = {strings['noise']!r}\nelse:\n    haystack = needle\n")
    (scripts / "data" / "synthetic" / "qa.py").write_text(f"DOCUMENT_PROMPT = {strings['document']!r}\n")
    metrics = ", ".join(f"{k!r}: {{'metric_fn': {v}}}" for k, v in config["metrics"].items())
    (scripts / "eval" / "synthetic" / "constants.py").write_text(f"TASKS = {{{metrics}}}\n")
    if data:
        module = fixture_script()
        folder = scripts / "data" / "synthetic" / "json"
        (folder / "PaulGrahamEssays.json").write_text(json.dumps({"text": module.essay_text()}))
        (folder / "squad.json").write_text(json.dumps(module.squad_data()))
        (folder / "hotpotqa.json").write_text(json.dumps(module.hotpotqa_data()))
    return root


@pytest.fixture(scope="module")
def punkt(tmp_path_factory):
    """The fixture's stand-in punkt_tab on nltk's path (the real one is downloaded by nltk at run time)."""
    folder = str(fixture_script().write_punkt(tmp_path_factory.mktemp("nltk_data")))
    nltk.data.path.insert(0, folder)
    yield folder
    nltk.data.path.remove(folder)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return write_ruler_checkout(tmp_path_factory.mktemp("ruler"), CONFIG)


@pytest.fixture(scope="module")
def tokenizer():
    return fixture_script().fixture_tokenizer(CONFIG)


@pytest.fixture(scope="module")
def sources(checkout, punkt):
    assert nltk.data.path[0] == punkt
    if not HAS_WONDERWORDS:
        pytest.skip("RULER's word lists come from wonderwords: pip install wonderwords")
    return load_sources(load_config(checkout), TASKS, ruler_dir=checkout)[0]


def Oracle(tokenizer, answers, wrong="no idea", max_length=8192):  # noqa: N802 (it stands in for a class)
    """A backend with the fixture's tokenizer that answers each prompt with `answers[prompt]` (or `wrong`)."""
    return FakeBackend(lambda p: " " + ", ".join(answers[p]) if p in answers else wrong, tokenizer=tokenizer,
                       max_length=max_length, batch_size=4, name="oracle")


def recording_answers(monkeypatch) -> dict:
    """Fill a dict prompt -> answers with every sample run_ruler draws."""
    answers, original = {}, ruler.task_samples

    def recording(*args, **kwargs):
        samples = original(*args, **kwargs)
        answers.update((s["prompt"], s["answers"]) for s in samples)
        return samples

    monkeypatch.setattr(ruler, "task_samples", recording)
    return answers


# ---------------------------------------------------------------- parity with RULER's own code

@needs_wonderwords
@pytest.mark.parametrize("setting", range(len(PARITY["settings"])))
def test_samples_are_rulers_token_for_token(setting, sources, tokenizer):
    """Every task's prompts (model template and answer prefix included), answers and lengths equal what RULER's
    prepare.py wrote for the same inputs (tests/fixtures/ruler_parity.json, scripts/ruler_parity_fixture.py)."""
    if fixture_script().tokenizer_hash(tokenizer) != PARITY["tokenizer_sha256"]:
        pytest.skip("this tokenizers version trains another BPE than the fixture's; regenerate the fixture")
    if f"wonderwords {version('wonderwords')}" not in PARITY["versions"]:
        pytest.skip(f"the fixture was made with {PARITY['versions']}; wonderwords {version('wonderwords')} differs")
    spec = PARITY["settings"][setting]
    frame = chat_frame(tokenizer, spec["template"] != "base")
    count = token_counter(tokenizer)
    for task, expected in spec["samples"].items():
        ours = task_samples(CONFIG, task, spec["length"], len(expected), 42, sources, count, frame)
        for i, (sample, official) in enumerate(zip(ours, expected)):
            full = frame[0] + sample["prompt"] + frame[1] + sample["answer_prefix"]
            where = f"{spec['template']} {spec['length']} {task} sample {i}"
            assert full[:160] == official["head"] and full[-160:] == official["tail"], where
            assert hashlib.sha256(full.encode()).hexdigest() == official["sha256"], where
            assert sample["answers"] == official["outputs"] and sample["tokens"] == official["length"], where
        assert len(ours) == len(expected)


@pytest.mark.parametrize("setting", range(len(PARITY["settings"])))
def test_scores_are_rulers_evaluate_py(setting):
    module = fixture_script()
    spec = PARITY["settings"][setting]
    for variant in range(PARITY["variants"]):
        for task, samples in spec["samples"].items():
            metric = METRICS[CONFIG["metrics"][CONFIG["tasks"][task]["task"]]]
            scores = [metric(postprocess(module.prediction(s["outputs"], variant)), s["outputs"]) for s in samples]
            assert abs(task_score(scores) - spec["scores"][str(variant)][task]) < 1e-6, (task, variant)
            official = spec["sample_scores"][str(variant)][task]
            assert all(abs(task_score([s]) - o) < 1e-6 for s, o in zip(scores, official)), (task, variant)


# ---------------------------------------------------------------- pieces

def test_sorted_pairs_are_sorted_set_of_every_adjective_noun():
    adjectives = ["high", "high-pitched", "ad", "ad hoc", "x-rated", "x", "o'clock", "o", "zz", "high", "a-", "a"]
    nouns = ["pitched-tone", "tone", "Bell", "rated", "hoc", "'clock", "-x", "tone", "a"]
    expected = sorted({f"{a}-{n}" for a in adjectives for n in nouns})
    pairs = SortedPairs(adjectives, nouns)
    assert len(pairs) == len(expected) and [pairs[i] for i in range(len(pairs))] == expected
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_rulers_files_are_read_as_literals(tmp_path):
    root = write_ruler_checkout(tmp_path / "ruler", CONFIG, data=False)
    config = load_config(root)
    assert config["source"] == {"ruler_dir": str(root / "scripts")}
    assert {k: v for k, v in config.items() if k != "source"} == CONFIG and list(config["tasks"]) == TASKS
    assert load_config(root / "scripts")["tasks"] == CONFIG["tasks"]
    (root / "scripts" / "data" / "synthetic" / "qa.py").unlink()
    with pytest.raises(UserError, match="qa.py is missing"):
        load_config(root)
    with pytest.raises(UserError, match="clone of NVIDIA/RULER"):
        load_config(tmp_path)
    broken = write_ruler_checkout(tmp_path / "broken", {**CONFIG, "metrics": {**CONFIG["metrics"], "qa": "f1"}}, False)
    with pytest.raises(UserError, match="'f1' is not one of"):
        load_config(broken)


def test_config_downloads_into_the_cache_once(tmp_path, monkeypatch):
    write_ruler_checkout(tmp_path / "cache" / "ruler" / RULER_COMMIT, CONFIG, data=False)
    (tmp_path / "cache" / "ruler" / RULER_COMMIT / "scripts" / "synthetic.yaml").unlink()
    monkeypatch.setenv("TENFOLD_CACHE", str(tmp_path / "cache"))
    urls = []

    def fake_download(url, path, *_reasons):
        urls.append(url)
        path.write_text(yaml.safe_dump(CONFIG["tasks"], sort_keys=False))

    monkeypatch.setattr(ruler, "download", fake_download)
    assert load_config()["tasks"] == CONFIG["tasks"] and load_config()["source"] == {"commit": RULER_COMMIT}
    assert urls == [ruler.RAW_URL.format(commit=RULER_COMMIT, path="synthetic.yaml")]  # once, at the pinned commit


def test_metrics_and_postprocess_are_rulers():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all("only 123", ["123", "456"]) == 0.5
    assert string_match_part("in PARIS, surely", ["London", "paris"]) == 1.0
    assert string_match_part("in Rome", ["London", "paris"]) == 0.0
    assert postprocess("\x07 ab\x01cd \t\n") == "ab\ncd"
    assert task_score([1.0, 0.5, 0.0]) == 50.0 and task_score([1 / 3] * 3) == 33.33


def test_summary_is_the_mean_of_tasks_per_length_and_the_effective_length():
    scores = {("a", 4096): [1.0, 1.0], ("b", 4096): [1.0, 0.5], ("a", 8192): [1.0, 0.5], ("b", 8192): [0.5, 0.5],
              ("a", 16384): [0.0, 1.0], ("b", 16384): [1.0, 1.0]}
    records = [{"task": t, "length": L, "score": s} for (t, L), values in scores.items() for s in values]
    summary = summarize(records, ["a", "b"], [4096, 8192, 16384])
    assert summary["by_task_and_length"]["b"] == {"4096": 75.0, "8192": 50.0, "16384": 100.0}
    assert summary["by_length"] == {"4096": 87.5, "8192": 62.5, "16384": 75.0}
    assert summary["score"] == 75.0 and summary["by_task"] == {"a": 75.0, "b": 75.0}
    assert summary["weighted_average"] == {"inc": round((87.5 + 2 * 62.5 + 3 * 75) / 6, 2),
                                           "dec": round((3 * 87.5 + 2 * 62.5 + 75) / 6, 2)}
    assert summary["threshold"] == 85.6 and summary["effective_length"] == 4096
    assert summarize(records, ["a", "b"], [4096, 8192, 16384], threshold=70)["effective_length"] == 16384
    assert summarize(records, ["a", "b"], [4096, 8192, 16384], threshold=87.5)["effective_length"] is None


def test_chat_frame_is_the_template_around_the_message(tokenizer):
    before, after = chat_frame(tokenizer, True)
    assert before == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"  # RULER's meta-llama3
    assert after == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert chat_frame(tokenizer, False) == ("", "")
    assert token_counter(tokenizer)(before + "hi" + after) == len(tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True, return_dict=False))


def test_qa_files_and_hub_rows_read_alike(tmp_path, monkeypatch):
    module = fixture_script()
    squad, hotpot = module.squad_data(), module.hotpotqa_data()
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(squad))
    (tmp_path / "hotpot.json").write_text(json.dumps(hotpot))
    questions, documents = read_qa("squad", tmp_path / "dev-v2.0.json", tmp_path)[0]
    assert len(documents) == 23 and len(questions) == 24  # a repeated paragraph, only answerable questions
    assert questions[0]["outputs"] == [squad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"]] * 2 + \
        ["to " + squad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"]]
    assert len(questions[0]["more_context"]) == 3 and questions[0]["context"][0] not in questions[0]["more_context"]
    hotpot_questions, hotpot_documents = read_qa("hotpotqa", tmp_path / "hotpot.json", tmp_path)[0]
    assert len(hotpot_questions) == 8 and len(hotpot_documents) == 32 and hotpot_questions[1]["outputs"] == \
        [hotpot[1]["answer"]]
    assert [hotpot_documents[i] for i in hotpot_questions[1]["context"]] == [f"{t}\n{''.join(s)}"
                                                                           for t, s in hotpot[1]["context"]]

    rows = {"rajpurkar/squad_v2": [{"title": a["title"], "context": p["context"], "question": q["question"],
                                    "answers": {"text": [x["text"] for x in q["answers"]]}}
                                   for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]],
            "hotpotqa/hotpot_qa": [{"question": h["question"], "answer": h["answer"],
                                    "context": {"title": [t for t, _ in h["context"]],
                                                "sentences": [s for _, s in h["context"]]}} for h in hotpot]}
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda repo, *_config, **_split: rows[repo])
    assert read_qa("squad", None, tmp_path) == (read_squad(squad), "hub:rajpurkar/squad_v2")
    assert read_qa("hotpotqa", None, tmp_path)[0] == read_hotpotqa(hotpot)

    def offline(*_args, **_kwargs):
        raise ConnectionError("offline and not in the cache")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"SQuAD v2 dev\) could not be loaded .*offline.*pass --squad dev-v2.0.json"):
        read_qa("squad", None, tmp_path)
    with pytest.raises(UserError, match="--hotpotqa takes hotpot_dev_distractor_v1.json"):
        read_qa("hotpotqa", tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(UserError, match="not in dev-v2.0.json's layout"):
        read_qa("squad", tmp_path / "bad.json", tmp_path)


@needs_wonderwords
@pytest.mark.usefixtures("punkt")
def test_essay_comes_from_rulers_json_or_a_text_and_needs_punkt(tmp_path, checkout, monkeypatch):
    config = load_config(checkout)
    sources, data = load_sources(config, ["niah_single_2"], ruler_dir=checkout)
    assert data["haystack"].endswith("PaulGrahamEssays.json") and sources.essay[:3] == \
        fixture_script().essay_text().split()[:3] and sources.nouns and not sources.qa
    (tmp_path / "essay.txt").write_text("One two.  Three\nfour.")
    sources, data = load_sources(config, ["niah_single_2", "qa_1"], haystack=str(tmp_path / "essay.txt"),
                                 ruler_dir=checkout)
    assert sources.essay == ["One", "two.", "Three", "four."] and list(sources.qa) == ["squad"]
    assert sources.sentences("Mr. Smith came. He left.") == ["Mr. Smith came.", "He left."]  # nltk, stand-in punkt
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(UserError, match="not RULER's PaulGrahamEssays.json"):
        load_sources(config, ["niah_single_2"], haystack=str(tmp_path / "bad.json"), ruler_dir=checkout)
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setattr(nltk, "download", lambda *_args, **_kwargs: False)
    with pytest.raises(UserError, match="punkt_tab"):
        load_sources(config, ["niah_single_2"], ruler_dir=checkout)
    assert set(load_sources(config, ["niah_single_1", "fwe"], ruler_dir=checkout)[1]) == {"wonderwords"}  # no essay


def test_cwe_draws_from_rulers_english_words_past_wonderwords(tmp_path, monkeypatch, tokenizer):
    from tenfold.eval.ruler_tasks import Sources

    english = [f"word{i}" for i in range(5000)]  # cwe probes with 4,096 words
    sources = Sources(nouns=["cat", "dog"], adjectives=["red"], verbs=["run"], english_words=lambda: english)
    samples = task_samples(CONFIG, "cwe", 1536, 2, 42, sources, token_counter(tokenizer))
    assert all(len(s["answers"]) == 10 and set(s["answers"]) <= set(english) for s in samples)
    assert all(s["tokens"] <= 1536 and s["prompt"].count(f". {s['answers'][0]}") == 6 for s in samples)  # < 4K: 6x

    root = write_ruler_checkout(tmp_path / "ruler", CONFIG, data=False)
    words = root / "scripts" / ruler.ENGLISH_WORDS[0]
    words.write_text(json.dumps({"0": "alpha", "1": "beta"}))
    assert ruler.english_words_loader(root / "scripts")() == ["alpha", "beta"]  # a clone after `git lfs pull`
    words.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:affcd6d4\nsize 8564991\n")
    monkeypatch.setenv("TENFOLD_CACHE", str(tmp_path / "cache"))
    downloads = []
    monkeypatch.setattr(ruler, "download", lambda url, path, *_: (downloads.append(url), path.parent.mkdir(
        parents=True, exist_ok=True), path.write_text('{"0": "not rulers"}')))
    with pytest.raises(UserError, match="not RULER's english_words.json"):
        ruler.english_words_loader(root / "scripts")()  # a pointer: downloaded, checked against its sha256
    assert downloads == [ruler.LFS_URL.format(commit=RULER_COMMIT, path=ruler.ENGLISH_WORDS[0])]


# ---------------------------------------------------------------- run_ruler

@needs_wonderwords
@pytest.mark.usefixtures("punkt")
def test_all_13_tasks_score_100_for_right_answers_resume_and_keep_their_key(tokenizer, checkout, tmp_path, monkeypatch):
    answers = recording_answers(monkeypatch)
    oracle = Oracle(tokenizer, answers)
    summary = run_ruler(oracle, tmp_path, lengths=[1536, 2048], samples=2, ruler_dir=str(checkout))
    assert summary["tasks"] == TASKS and set(summary["by_task_and_length"]) == set(TASKS)
    assert summary["score"] == 100.0 and summary["by_length"] == {"1536": 100.0, "2048": 100.0}
    assert summary["effective_length"] == 2048 and summary["weighted_average"] == {"inc": 100.0, "dec": 100.0}
    assert ({(c["max_new_tokens"], c["chat"]) for c in oracle.calls}
            == {(128, True), (30, True), (120, True), (50, True), (32, True)})
    records = json.loads((tmp_path / "ruler.json").read_text())
    assert len(records) == 13 * 2 * 2 and [r["id"] for r in records[:3]] == ["niah_single_1-1536-0",
                                                                           "niah_single_1-1536-1",
                                                                           "niah_single_1-2048-0"]
    assert all(r["tokens"] <= r["length"] and r["score"] == 1.0 for r in records)
    wrong = Oracle(tokenizer, {})
    assert run_ruler(wrong, tmp_path, lengths=[1536, 2048], samples=2, ruler_dir=str(checkout))["score"] == 100.0
    assert not wrong.calls  # every case resumed
    with pytest.raises(ValueError, match="settings.seed 42 -> 7"):
        run_ruler(wrong, tmp_path, lengths=[2048], samples=2, seed=7, ruler_dir=str(checkout))
    again = run_ruler(wrong, tmp_path, lengths=[2048], samples=1, seed=7, ruler_dir=str(checkout), overwrite=True,
                      tasks=["qa_2", "cwe"], threshold=50.0)
    assert again["score"] == 0.0 and again["effective_length"] is None and again["tasks"] == ["qa_2", "cwe"]
    raw = run_ruler(wrong, tmp_path / "raw", tasks=["niah_single_1"], lengths=[2048], samples=1, chat=False,
                    ruler_dir=str(checkout))
    last = wrong.calls[-1]
    assert raw["chat"] is False and (len(last["prompts"]), last["max_new_tokens"], last["chat"]) == (1, 128, False)
    # RULER's base template: no chat template


@needs_wonderwords
@pytest.mark.usefixtures("punkt")
def test_run_ruler_refuses_bad_options_before_any_work(tokenizer, checkout, tmp_path):
    oracle = Oracle(tokenizer, {}, max_length=4096)
    with pytest.raises(UserError, match="unknown task.*niah_single_4"):
        run_ruler(oracle, tmp_path, tasks=["niah_single_4"], ruler_dir=str(checkout))
    with pytest.raises(ValueError, match="exceeds what oracle holds"):
        run_ruler(oracle, tmp_path, lengths=[8192], ruler_dir=str(checkout))
    with pytest.raises(UserError, match="hotpotqa has 8 questions; use --samples 8"):
        run_ruler(oracle, tmp_path, tasks=["qa_2"], lengths=[1024], samples=9, ruler_dir=str(checkout))
    oracle.tokenizer = None
    with pytest.raises(UserError, match="needs oracle's tokenizer"):
        run_ruler(oracle, tmp_path, lengths=[1024], ruler_dir=str(checkout))
    assert not (tmp_path / "ruler.predictions.jsonl").exists()


@needs_wonderwords
def test_ruler_cli_runs_a_tiny_model_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    """The CLI on tenfold's tiny model, RULER's files as if downloaded into the cache."""
    write_ruler_checkout(tmp_path / "cache" / "ruler" / RULER_COMMIT, CONFIG, data=False)
    monkeypatch.setenv("TENFOLD_CACHE", str(tmp_path / "cache"))
    main(["eval", "ruler", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"), "--tasks",
          "niah_single_1,fwe", "--lengths", "900", "--samples", "2", "--max-length", "900"])
    records = json.loads((tmp_path / "out" / "ruler.json").read_text())
    assert [r["task"] for r in records] == ["niah_single_1"] * 2 + ["fwe"] * 2
    assert all(r["score"] == string_match_all(postprocess(r["prediction"]), r["answers"]) for r in records)
    summary = json.loads((tmp_path / "out" / "ruler.summary.json").read_text())
    assert summary["by_length"]["900"] == round((summary["by_task_and_length"]["niah_single_1"]["900"] +
                                                 summary["by_task_and_length"]["fwe"]["900"]) / 2, 2)
    assert len((tmp_path / "out" / "ruler.predictions.jsonl").read_text().splitlines()) == 4
