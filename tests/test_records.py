import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tenfold.errors import RecordError
from tenfold.io import read_jsonl
from tenfold.records import Encoded, encode_record
from tenfold.toy import build_tokenizer, toy_records

EOT = "<|eot_id|>"
DOC_LINES = [f"day {i} : the red fox paints {i} blue doors ." for i in range(40)]
QUESTION = "what is the number of anna ?"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def chat(doc_lines=DOC_LINES, answers=("42", "17", "63"), record_id="chat-1") -> dict:
    turns = [{"role": "user", "content": "\n".join(doc_lines) + "\n\n" + QUESTION},
             {"role": "assistant", "content": answers[0]}]
    for i, answer in enumerate(answers[1:]):
        turns += [{"role": "user", "content": f"and the number of person {i} ?"},
                  {"role": "assistant", "content": answer}]
    return {"id": record_id, "source": "test", "task": "qa", "conversations": turns, "meta": {}}


def weighted_pieces(tok, enc: Encoded) -> list[str]:
    """Decode each maximal run of weighted tokens."""
    pieces, run = [], []
    for token, weight in zip(enc.input_ids, enc.weights):
        if weight > 0:
            run.append(token)
        elif run:
            pieces.append(tok.decode(run))
            run = []
    if run:
        pieces.append(tok.decode(run))
    return pieces


def test_every_assistant_turn_is_labelled_and_nothing_else(tok):
    enc = encode_record(chat(), tok, max_length=10_000)
    assert weighted_pieces(tok, enc) == ["42" + EOT, "17" + EOT, "63" + EOT]
    assert all(w in (0.0, 1.0) for w in enc.weights)
    assert not enc.truncated


def test_context_weight_applies_to_user_text_not_to_the_template(tok):
    plain = encode_record(chat(), tok, max_length=10_000)
    enc = encode_record(chat(), tok, max_length=10_000, context_weight=0.5)
    assert enc.input_ids == plain.input_ids
    assert enc.weights[0] == 0.0
    for w, w_plain in zip(enc.weights[1:], plain.weights[1:]):
        assert w in ((1.0,) if w_plain == 1.0 else (0.5, 0.0))
    half = [t for t, w in zip(enc.input_ids, enc.weights) if w == 0.5]
    half_text = tok.decode(half)
    for turn in chat()["conversations"]:
        if turn["role"] == "user":  # every word the user wrote carries the context weight
            assert all(word in half_text for word in turn["content"].split())
    markup = [t for t, w in zip(enc.input_ids, enc.weights) if w == 0.0]
    assert (tok.convert_tokens_to_ids("<|start_header_id|>") in markup
            and tok.convert_tokens_to_ids("<|end_header_id|>") in markup)
    assert not {tok.convert_tokens_to_ids(x) for x in ("<|start_header_id|>", "<|end_header_id|>")} & set(half)
    assert "user" not in half_text.split() and "assistant" not in half_text


@pytest.mark.parametrize("record", toy_records(6, seed=3), ids=lambda r: r["id"])
def test_first_weight_is_zero_and_lengths_match(tok, record):
    enc = encode_record(record, tok, max_length=10_000, context_weight=0.3)
    assert enc.id == record["id"]
    assert enc.input_ids[0] == tok.bos_token_id
    assert len(enc.input_ids) == len(enc.weights)
    assert enc.weights[0] == 0.0
    assert tok.decode(enc.input_ids).count(tok.bos_token) == 1


def test_plain_text_weights_and_eos(tok):
    text = "\n".join(DOC_LINES[:3])
    enc = encode_record({"id": "p", "source": "t", "text": text}, tok, max_length=10_000)
    assert enc.input_ids[0] == tok.bos_token_id
    assert enc.input_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[1:-1]) == text
    assert enc.weights == [0.0] + [1.0] * (len(enc.input_ids) - 1)
    assert not enc.truncated


def test_plain_text_longer_than_max_length_is_cut(tok):
    record = {"id": "p", "source": "t", "text": "\n".join(DOC_LINES)}
    full = encode_record(record, tok, max_length=10_000)
    enc = encode_record(record, tok, max_length=50)
    assert enc.truncated
    assert enc.input_ids == full.input_ids[:50]
    assert enc.weights == [0.0] + [1.0] * 49
    exact = encode_record(record, tok, max_length=len(full.input_ids) - 1)  # fits, but without eos
    assert exact.input_ids == full.input_ids[:-1] and not exact.truncated


def test_middle_truncation_keeps_ends_question_and_answers(tok):
    record = chat()
    full = encode_record(record, tok, max_length=10_000)
    max_length = len(full.input_ids) - 150
    enc = encode_record(record, tok, max_length=max_length)
    assert len(enc.input_ids) == len(enc.weights) == max_length
    assert enc.truncated
    text = tok.decode(enc.input_ids)
    assert text.startswith(tok.bos_token + "<|start_header_id|>user<|end_header_id|>\n\n" + DOC_LINES[0] + "\n")
    assert "\n" + DOC_LINES[-1] + "\n\n" + QUESTION + EOT in text
    assert DOC_LINES[20] not in text  # the cut is in the middle of the document
    assert weighted_pieces(tok, enc) == weighted_pieces(tok, full)
    # what remains of the document is as much head as tail
    kept_head = sum(line in text for line in DOC_LINES[:20])
    kept_tail = sum(line in text for line in DOC_LINES[20:])
    assert abs(kept_head - kept_tail) <= 1


def test_middle_truncation_of_toy_records_keeps_question_and_answers(tok):
    for record in toy_records(20, seed=5, min_lines=40, max_lines=60)[::2]:
        full = encode_record(record, tok, max_length=10_000)
        enc = encode_record(record, tok, max_length=len(full.input_ids) - 100)
        assert enc.truncated and len(enc.input_ids) == len(full.input_ids) - 100
        question = record["conversations"][0]["content"].rsplit("\n\n", 1)[1]
        assert question + EOT in tok.decode(enc.input_ids)
        assert weighted_pieces(tok, enc) == weighted_pieces(tok, full)


def smallest_fit(tok, record) -> tuple[Encoded, Encoded]:
    """The untruncated encoding and the one at the smallest max_length that still fits."""
    full = encode_record(record, tok, max_length=10_000)
    max_length = len(full.input_ids)
    while encode_record(record, tok, max_length=max_length - 1) is not None:
        max_length -= 1
    return full, encode_record(record, tok, max_length=max_length)


def test_cutting_the_whole_document_still_keeps_the_question(tok):
    full, enc = smallest_fit(tok, chat())
    text = tok.decode(enc.input_ids)
    assert "<|end_header_id|>\n\n\n\n" + QUESTION + EOT in text  # nothing but the paragraph break left
    assert weighted_pieces(tok, enc) == weighted_pieces(tok, full)


def test_first_user_turn_without_paragraph_break_keeps_its_end(tok):
    record = chat()
    record["conversations"][0]["content"] = "\n".join(DOC_LINES)  # one block, no separate question
    full = encode_record(record, tok, max_length=10_000)
    enc = encode_record(record, tok, max_length=len(full.input_ids) - 100)
    text = tok.decode(enc.input_ids)
    assert DOC_LINES[0] in text and DOC_LINES[-1] in text
    full, enc = smallest_fit(tok, record)
    text = tok.decode(enc.input_ids)
    assert DOC_LINES[0] not in text
    assert "\n" + DOC_LINES[-2] + "\n" + DOC_LINES[-1] + EOT in text  # at least its final 32 tokens stay
    assert weighted_pieces(tok, enc) == weighted_pieces(tok, full)


def test_record_that_cannot_fit_is_none(tok):
    record = chat(doc_lines=["short doc ."], answers=("a long answer " * 30,))
    assert encode_record(record, tok, max_length=60) is None
    record = chat(doc_lines=DOC_LINES[:2])
    full = encode_record(record, tok, max_length=10_000)
    assert encode_record(record, tok, max_length=len(full.input_ids) - 1) is not None
    assert encode_record(record, tok, max_length=len(full.input_ids) - 40) is None


def test_tokenizer_without_chat_template_is_an_error(tok):
    bare = build_tokenizer(chat_template=None)
    with pytest.raises(ValueError, match="has no chat template.*set tokenizer.chat_template"):
        encode_record(chat(), bare, max_length=10_000)


def test_template_that_is_not_prefix_stable_is_an_error():
    shifty = build_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}|{{ messages|length }}"
                                           "{% endfor %}")
    with pytest.raises(ValueError, match="prefix"):
        encode_record(chat(), shifty, max_length=10_000)


@pytest.mark.parametrize("change, problem", [
    (lambda r: r.pop("conversations"), "neither"),
    (lambda r: r.update(conversations=[]), "empty"),
    (lambda r: r.update(conversations="hi"), "not a list"),
    (lambda r: r["conversations"][1].pop("content"), "turn 1"),
    (lambda r: r["conversations"][0].pop("role"), "turn 0"),
    (lambda r: r["conversations"][1].update(role="bot"), "'bot'"),
    (lambda r: r.update(conversations=[{"role": "user", "content": "hi"}]), "no assistant"),
    (lambda r: r.update(conversations=[{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]),
     "not from the user"),
    (lambda r: r["conversations"].insert(1, {"role": "user", "content": "and?"}), "turn 1 is from the user"),
    (lambda r: r["conversations"].append({"role": "system", "content": "late"}), "where the user speaks next"),
    (lambda r: r.update(conversations=None, text=3) or r.pop("conversations"), "'text'"),
])
def test_malformed_records_name_the_record(tok, change, problem):
    record = chat(record_id="bad-7")
    change(record)
    with pytest.raises(RecordError, match="bad-7") as info:
        encode_record(record, tok, max_length=10_000)
    assert problem in str(info.value)


def test_non_dict_record_is_a_record_error(tok):
    with pytest.raises(RecordError, match="not a JSON object"):
        encode_record(["not", "a", "dict"], tok, max_length=100)


def test_system_turn_before_user_is_accepted(tok):
    record = chat()
    record["conversations"].insert(0, {"role": "system", "content": "be brief"})
    enc = encode_record(record, tok, max_length=10_000)
    assert weighted_pieces(tok, enc) == ["42" + EOT, "17" + EOT, "63" + EOT]


def test_truncation_never_cuts_the_system_turn_even_when_it_repeats_the_document(tok):
    record = chat()
    user_content = record["conversations"][0]["content"]
    record["conversations"].insert(0, {"role": "system", "content": user_content})
    full = encode_record(record, tok, max_length=10_000)
    enc = encode_record(record, tok, max_length=len(full.input_ids) - 150)
    text = tok.decode(enc.input_ids)
    assert text.startswith(tok.bos_token + "<|start_header_id|>system<|end_header_id|>\n\n" + user_content + EOT)
    assert text.count(DOC_LINES[20]) == 1


def test_read_jsonl_roundtrip_and_bad_line(tmp_path):
    records = toy_records(3)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert list(read_jsonl(path)) == records
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1]) + "\n{oops\n")
    with pytest.raises(RecordError, match="line 3"):
        list(read_jsonl(path))
