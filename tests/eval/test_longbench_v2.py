import copy
import io
import json
from pathlib import Path

import pytest
from tokenizers import processors

from tenfold.errors import RecordError, UserError
from tenfold.eval import longbench_v2
from tenfold.eval.longbench_v2 import (
    breakdown,
    extract_answer,
    fill_template,
    load_data,
    load_templates,
    run_longbench_v2,
    template_names,
    truncate_middle,
)
from tenfold.generation import Backend, load_backend
from tenfold.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "benchmarks" / "longbench_v2"  # LongBench v2's own files, for tests only
PLACEHOLDERS = "$Q$\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n"
# Templates in the official placeholder format, our own words (LongBench's text is downloaded at run time).
TEMPLATES = {
    "0shot.txt": "DOC[\n$DOC$\n]\nQUESTION " + PLACEHOLDERS + "Say: The correct answer is (X).",
    "0shot_cot.txt": "DOC[\n$DOC$\n]\nQUESTION " + PLACEHOLDERS + "THINK:",
    "0shot_cot_ans.txt": "NODOC\nQUESTION " + PLACEHOLDERS + "THOUGHT $COT$\nSay: The correct answer is (X).",
    "0shot_no_context.txt": "QUESTION " + PLACEHOLDERS + "Say: The correct answer is (X).",
}
WORDS = "the red fox paints two blue doors . anna has a green owl . day 3 : the gold hen hides one cup .".split()
# question id -> (difficulty, length, answer, the scripted reply)
QUESTIONS = {
    "q0": ("easy", "short", "A", "The correct answer is (A)"),
    "q1": ("hard", "medium", "B", "**The correct answer is B**, surely"),
    "q2": ("hard", "long", "C", "I think it is C"),
    "q3": ("easy", "long", "D", ""),
    "q4": ("hard", "short", "C", "The correct answer is (D)"),
}


def write_templates(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TEMPLATES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def make_items(n_words: int = 80) -> list[dict]:
    items = []
    for i, (qid, (difficulty, length, answer, _)) in enumerate(QUESTIONS.items()):
        context = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n_words * (i + 1)))  # the later ones get cut
        items.append({"_id": qid, "domain": "Single-Document QA", "sub_domain": "Toy", "difficulty": difficulty,
                      "length": length, "question": f" which door {qid} ?\n", "choice_A": " red ", "choice_B": "blue",
                      "choice_C": "green", "choice_D": "gold", "answer": answer, "context": f"\n{context}\n"})
    return items


def write_data(path: Path, items: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items if items is not None else make_items(), ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    tok = copy.deepcopy(load_tokenizer(str(tiny_model_dir)))  # one that adds a BOS, as Llama's: pred.py counts it
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
    return tok


class Scripted(Backend):
    """A backend whose replies are scripted per question id (found in the prompt); it records every call."""

    def __init__(self, tokenizer, max_length=4096, replies=None, reasoning=None):
        self.tokenizer, self.max_length, self.name, self.batch_size = tokenizer, max_length, "scripted", 2
        self.replies = replies or {qid: q[3] for qid, q in QUESTIONS.items()}
        self.reasoning, self.calls = reasoning, []

    def generate(self, prompts, max_new_tokens, chat=True):
        self.calls.append((list(prompts), max_new_tokens, chat))
        replies = []
        for prompt in prompts:
            qid = next(q for q in QUESTIONS if f"which door {q} ?" in prompt)
            thinking = self.reasoning is not None and max_new_tokens == 1024
            replies.append(self.reasoning[qid] if thinking else self.replies[qid])
        return replies


# ---------------------------------------------------------------- pred.py's pieces

@pytest.mark.parametrize("response, expected", [
    ("The correct answer is (B)", "B"),
    ("**The correct answer is (C)**", "C"),
    ("The correct answer is **(C)**", "C"),  # "*" removed first
    ("The correct answer is *B*", "B"),
    ("The correct answer is D.", "D"),  # the second pattern
    ("The correct answer is B; on reflection The correct answer is (C)", "C"),  # the parenthesized one wins
    ("The correct answer is AB", "A"),
    ("the correct answer is (A)", None),  # case-sensitive
    ("The correct answer is (E)", None),
    ("The correct answer is: (B)", None),
    ("The correct answer is  (B)", None),
    ("The correct answer is (b)", None),
    ("", None),
])
def test_extract_answer_is_pred_py_regexes(response, expected):
    assert extract_answer(response) == expected


def test_fill_template_strips_and_replaces_in_pred_py_order():
    item = {"question": "  pick $C_A$ or not?\n", "choice_A": " red\n", "choice_B": "$Q$", "choice_C": "c",
            "choice_D": "d"}
    template = "<$DOC$>|$Q$|$C_A$|$C_B$|$C_C$|$C_D$|$COT$"
    # $C_A$ inside the question is filled (it comes later in the chain); $Q$ inside choice B is not
    assert fill_template(template, item, "\n doc $Q$ \n") == "<doc pick red or not?>|pick red or not?|red|$Q$|c|d|$COT$"
    assert fill_template(template, item, "x", cot="why $Q$").endswith("|d|why $Q$")


def test_truncate_middle_is_pred_py_cut_with_the_bos_counted(tokenizer):
    prompt = "question first . " + " ".join(WORDS * 20) + " question last ?"
    ids = tokenizer.encode(prompt)
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 101
    odd = truncate_middle(tokenizer, prompt, 101)  # -101//2 == -51: 50 ids from the start, 51 from the end
    assert odd == tokenizer.decode(ids[:50] + ids[-51:], skip_special_tokens=True)
    assert odd != tokenizer.decode(ids[:50] + ids[-50:], skip_special_tokens=True)
    assert odd.startswith("question first") and odd.endswith("question last ?")
    assert truncate_middle(tokenizer, prompt, 100) == tokenizer.decode(ids[:50] + ids[-50:], skip_special_tokens=True)
    assert truncate_middle(tokenizer, prompt, len(ids)) == prompt  # exactly max_len: no cut
    assert truncate_middle(tokenizer, prompt, len(ids) - 1) != prompt  # the BOS counts


# ---------------------------------------------------------------- result.py's breakdown

def test_breakdown_is_result_py_arithmetic():
    records = []
    for qid, (difficulty, length, answer, reply) in QUESTIONS.items():
        pred = extract_answer(reply)
        records.append({"difficulty": difficulty, "length": length, "pred": pred, "judge": pred == answer})
    row = breakdown(records)
    assert row["overall"] == 40.0 and row["by_difficulty"] == {"easy": 50.0, "hard": 33.3}
    assert row["by_length"] == {"short": 50.0, "medium": 100.0, "long": 0.0}
    assert row["questions"] == {"overall": 5, "easy": 2, "hard": 3, "short": 2, "medium": 1, "long": 2}
    compensated = breakdown(records, compensated=True)  # q2, q3 unanswered: 0.25 each; q4 answered wrong: 0
    assert compensated["overall"] == 50.0 and compensated["by_difficulty"] == {"easy": 62.5, "hard": 41.7}
    assert compensated["by_length"] == {"short": 50.0, "medium": 100.0, "long": 25.0}
    assert breakdown(records[:1])["by_difficulty"]["hard"] is None  # result.py divides by zero here


# ---------------------------------------------------------------- the run

def test_run_without_cot_matches_pred_py_and_result_py(tokenizer, tmp_path):
    backend = Scripted(tokenizer)
    data, prompts = write_data(tmp_path / "data.json"), write_templates(tmp_path / "prompts")
    summary = run_longbench_v2(backend, tmp_path / "out", truncate_length=200, data=data, prompts_dir=prompts)
    assert {(max_new, chat) for _, max_new, chat in backend.calls} == {(128, True)}
    sent = [p for batch, _, _ in backend.calls for p in batch]
    assert len(sent) == 5 and all(len(tokenizer.encode(p)) <= 201 for p in sent)  # 200 + a retokenized seam
    items = {item["_id"]: item for item in make_items()}
    q0 = next(p for p in sent if "which door q0 ?" in p)  # short: not cut, filled as pred.py fills it
    assert q0 == fill_template(TEMPLATES["0shot.txt"], items["q0"], items["q0"]["context"])
    q4 = next(p for p in sent if "which door q4 ?" in p)
    assert q4.startswith("DOC[") and q4.endswith("Say: The correct answer is (X).") and len(q4) < len(
        fill_template(TEMPLATES["0shot.txt"], items["q4"], items["q4"]["context"]))
    assert summary["score"] == summary["overall"] == 40.0 and summary["by_difficulty"] == {"easy": 50.0, "hard": 33.3}
    assert summary["by_length"] == {"short": 50.0, "medium": 100.0, "long": 0.0}
    assert summary["unanswered"] == 2 and summary["empty_replies"] == 1 and summary["benchmark"] == "longbench_v2"

    records = json.loads((tmp_path / "out" / "longbench_v2.json").read_text())
    by_id = {r["_id"]: r for r in records}
    assert set(records[0]) == {"id", *longbench_v2.FIELDS, "response", "pred", "judge", "empty_reply"}
    assert by_id["q1"]["response"] == "**The correct answer is B**, surely" and by_id["q1"]["pred"] == "B"
    assert by_id["q1"]["judge"] is True and by_id["q4"]["judge"] is False and by_id["q3"]["empty_reply"] is True
    assert by_id["q4"]["context"] == items["q4"]["context"][:1000]
    assert json.loads((tmp_path / "out" / "longbench_v2.summary.json").read_text()) == json.loads(json.dumps(summary))

    backend.calls.clear()  # compensated only scores: the same predictions, no generation
    compensated = run_longbench_v2(backend, tmp_path / "out", truncate_length=200, data=data, prompts_dir=prompts,
                                   compensated=True)
    assert backend.calls == [] and compensated["overall"] == 50.0 and compensated["compensated"] is True


def test_cot_generates_1024_then_answers_from_the_stripped_reasoning(tokenizer, tmp_path):
    reasoning = {qid: f"  step one for {qid}\n" for qid in QUESTIONS}
    reasoning["q2"] = ""  # an empty reasoning: pred.py asks nothing more
    backend = Scripted(tokenizer, reasoning=reasoning)
    data, prompts = write_data(tmp_path / "data.json"), write_templates(tmp_path / "prompts")
    summary = run_longbench_v2(backend, tmp_path / "out", cot=True, truncate_length=200, data=data,
                               prompts_dir=prompts)
    lengths = [max_new for _, max_new, _ in backend.calls]
    assert set(lengths) == {1024, 128} and sum(len(b) for b, n, _ in backend.calls if n == 1024) == 5
    answer_prompts = [p for batch, n, _ in backend.calls if n == 128 for p in batch]
    assert len(answer_prompts) == 4 and all(p.startswith("NODOC") for p in answer_prompts)
    assert any("THOUGHT step one for q1\nSay:" in p for p in answer_prompts)
    thinking = [p for batch, n, _ in backend.calls if n == 1024 for p in batch]
    assert all(p.endswith("THINK:") for p in thinking)

    records = {r["_id"]: r for r in json.loads((tmp_path / "out" / "longbench_v2_cot.json").read_text())}
    assert records["q1"]["response_cot"] == "step one for q1" and records["q1"]["pred"] == "B"
    assert records["q2"]["response"] == "" and records["q2"]["empty_reply"] and records["q2"]["pred"] is None
    assert summary["cot"] is True and summary["overall"] == 40.0 and summary["empty_replies"] == 2  # q2 and q3

    backend.calls.clear()  # no_context wins over cot for the first pass (pred.py's if/elif), the passes stay
    run_longbench_v2(backend, tmp_path / "out", cot=True, no_context=True, truncate_length=200, data=data,
                     prompts_dir=prompts)
    first = [p for batch, n, _ in backend.calls if n == 1024 for p in batch]
    assert len(first) == 5 and all(p.startswith("QUESTION") and "DOC[" not in p for p in first)
    assert (tmp_path / "out" / "longbench_v2_no_context_cot.json").is_file()


def test_resume_generates_only_what_a_killed_run_lacks_and_refuses_other_settings(tokenizer, tmp_path):
    backend = Scripted(tokenizer)
    data, prompts = write_data(tmp_path / "data.json"), write_templates(tmp_path / "prompts")
    first = run_longbench_v2(backend, tmp_path / "out", truncate_length=200, data=data, prompts_dir=prompts)
    log = tmp_path / "out" / "longbench_v2.predictions.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + lines[2][:15])  # killed while writing the third
    backend.calls.clear()
    again = run_longbench_v2(backend, tmp_path / "out", truncate_length=200, data=data, prompts_dir=prompts)
    assert sum(len(batch) for batch, _, _ in backend.calls) == 3
    assert {k: v for k, v in again.items() if k != "model"} == {k: v for k, v in first.items() if k != "model"}

    with pytest.raises(ValueError, match="truncate_length 200 -> 100"):
        run_longbench_v2(backend, tmp_path / "out", truncate_length=100, data=data, prompts_dir=prompts)
    (prompts / "0shot.txt").write_text(TEMPLATES["0shot.txt"] + " Please.")
    with pytest.raises(ValueError, match="templates_sha256"):  # another template, other predictions
        run_longbench_v2(backend, tmp_path / "out", truncate_length=200, data=data, prompts_dir=prompts)
    backend.calls.clear()
    run_longbench_v2(backend, tmp_path / "out", truncate_length=200, data=data, prompts_dir=prompts, overwrite=True,
                     limit=2)
    assert sum(len(batch) for batch, _, _ in backend.calls) == 2
    assert len(json.loads((tmp_path / "out" / "longbench_v2.json").read_text())) == 2


def test_default_cut_and_the_length_check(tokenizer, tmp_path):
    data, prompts = write_data(tmp_path / "data.json"), write_templates(tmp_path / "prompts")
    summary = run_longbench_v2(Scripted(tokenizer, max_length=2000), tmp_path / "out", data=data, prompts_dir=prompts)
    assert summary["truncate_length"] == 2000 - 1024 - 128  # the same with and without CoT
    with pytest.raises(ValueError, match="exceeds"):  # 1800 + 128 room + 1024 CoT tokens > 2000: refused first
        run_longbench_v2(Scripted(tokenizer, max_length=2000), tmp_path / "out2", cot=True, truncate_length=1800,
                         data=data, prompts_dir=prompts)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(UserError, match="--truncate-length"):
        run_longbench_v2(Scripted(tokenizer, max_length=None), tmp_path / "out3", data=data, prompts_dir=prompts)


def test_tiny_model_end_to_end(tiny_model_dir, tmp_path):
    backend = load_backend(str(tiny_model_dir), batch_size=4, max_length=1024)
    data, prompts = write_data(tmp_path / "data.json", make_items(30)[:3]), write_templates(tmp_path / "prompts")
    summary = run_longbench_v2(backend, tmp_path / "out", truncate_length=100, data=data, prompts_dir=prompts)
    records = json.loads((tmp_path / "out" / "longbench_v2.json").read_text())
    assert len(records) == 3 and summary["questions"]["overall"] == 3
    assert all(r["pred"] == extract_answer(r["response"]) and r["judge"] == (r["pred"] == r["answer"])
               for r in records)
    assert summary["model"]["backend"] == "TransformersBackend" and summary["decoding"].startswith("greedy")


# ---------------------------------------------------------------- data and templates

def test_data_forms_and_bad_records(tmp_path):
    items = make_items()
    as_list = write_data(tmp_path / "list" / "data.json", items)
    assert load_data(as_list)[0] == items and load_data(tmp_path / "list")[0] == items  # the file or its folder
    lines = tmp_path / "data.jsonl"
    lines.write_text("".join(json.dumps({**item, "extra": 1}) + "\n" for item in items))
    assert load_data(lines)[0] == items  # JSON Lines too; only pred.py's fields are kept
    for change, message in (({"answer": "E"}, "question 2: answer 'E'"), ({"length": "huge"}, "length 'huge'"),
                            ({"difficulty": "Easy"}, "difficulty 'Easy'")):
        bad = copy.deepcopy(items)
        bad[1].update(change)
        with pytest.raises(RecordError, match=message):
            load_data(write_data(tmp_path / "bad.json", bad))
    del items[0]["choice_C"]
    with pytest.raises(RecordError, match="question 1: lacks choice_C"):
        load_data(write_data(tmp_path / "bad.json", items))
    (tmp_path / "broken.json").write_text('[{"_id": ')
    with pytest.raises(RecordError, match="broken.json: not valid JSON"):
        load_data(tmp_path / "broken.json")
    with pytest.raises(UserError, match="--data"):
        load_data(tmp_path / "missing.json")


def test_offline_without_data_is_a_user_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="THUDM/LongBench-v2 .*pass --data"):
        load_data(None)


def test_templates_from_a_folder_or_downloaded_once_at_the_pinned_commit(tmp_path, monkeypatch):
    prompts = write_templates(tmp_path / "prompts")
    assert load_templates(template_names(True, False), prompts) == \
        {"first": TEMPLATES["0shot_cot.txt"], "answer": TEMPLATES["0shot_cot_ans.txt"]}
    (prompts / "0shot.txt").unlink()
    with pytest.raises(UserError, match="0shot.txt is missing"):
        load_templates(template_names(False, False), prompts)
    (prompts / "0shot_cot_ans.txt").write_text("no reasoning slot $Q$")
    with pytest.raises(UserError, match=r"lacks \$Q\$ or \$COT\$"):
        load_templates(template_names(True, False), prompts)

    monkeypatch.setenv("TENFOLD_CACHE", str(tmp_path / "cache"))
    asked = []

    def offline(*_args, **_kwargs):
        raise OSError("no network")

    def online(url, **_kwargs):
        asked.append(url)
        return io.BytesIO(TEMPLATES[url.rsplit("/", 1)[1]].encode())

    monkeypatch.setattr(longbench_v2.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="--prompts-dir"):
        load_templates(template_names(False, True))
    monkeypatch.setattr(longbench_v2.urllib.request, "urlopen", online)
    assert load_templates(template_names(False, True)) == {"first": TEMPLATES["0shot_no_context.txt"]}
    assert load_templates(template_names(False, True)) == {"first": TEMPLATES["0shot_no_context.txt"]}
    assert asked == [f"https://raw.githubusercontent.com/THUDM/LongBench/{longbench_v2.COMMIT}/prompts/"
                     f"0shot_no_context.txt"]  # once: then the cache


@pytest.mark.skipif(not (SHARED / "data.json").is_file(), reason=f"LongBench v2's data.json is not in {SHARED}")
def test_the_official_data_loads():
    items, _ = load_data(SHARED / "data.json")
    assert len(items) == 503 and {i["difficulty"] for i in items} == {"easy", "hard"}
