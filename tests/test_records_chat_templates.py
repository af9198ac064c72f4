"""Label masks on the chat templates models ship: exactly each assistant answer and its end-of-turn token
carry loss. SmolLM2's real tokenizer (ChatML, a default system prompt when the conversation has none),
Llama-3's template, and Llama-3.1's (a default system block with the knowledge cutoff)."""

import pytest

from tenfold.records import encode_record
from tenfold.toy import LLAMA3_CHAT_TEMPLATE, build_tokenizer

# Llama-3.1-Instruct's template without tools: the system block is always written, with its date preamble.
LLAMA31_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n' + system + '<|eot_id|>' }}"
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ANSWERS = ("42", "The answer is 17, not 18.", "first line\nsecond line")
DOCUMENT = "\n".join(f"Line {i}: the lighthouse keeper counts {i} ships before dawn." for i in range(60))


@pytest.fixture(scope="module", params=["smollm2-chatml", "llama3", "llama3.1-default-system"])
def template(request):
    """(tokenizer, end-of-turn token, a phrase of the template's default system prompt or None)."""
    if request.param == "smollm2-chatml":
        return request.getfixturevalue("smollm2_tokenizer"), "<|im_end|>", "Hugging Face"
    if request.param == "llama3":
        return build_tokenizer(), "<|eot_id|>", None
    return build_tokenizer(chat_template=LLAMA31_CHAT_TEMPLATE), "<|eot_id|>", "December 2023"


def conversation(first_user: str = DOCUMENT + "\n\nHow many ships?", later_user: str = "And then?") -> dict:
    turns = [{"role": "user", "content": first_user}, {"role": "assistant", "content": ANSWERS[0]}]
    for answer in ANSWERS[1:]:
        turns += [{"role": "user", "content": later_user}, {"role": "assistant", "content": answer}]
    return {"id": "c", "conversations": turns}


def runs(ids: list[int], weights: list[float], value: float = 1.0) -> list[list[int]]:
    """The maximal runs of tokens whose weight is `value`."""
    found, run = [], []
    for token, weight in zip(ids, weights):
        if weight == value:
            run.append(token)
        elif run:
            found, run = found + [run], []
    return found + [run] if run else found


def test_exactly_the_answers_and_their_end_of_turn_tokens_carry_loss(template):
    tokenizer, end_of_turn, _ = template
    enc = encode_record(conversation(), tokenizer, max_length=100_000)
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    expected = [tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_id] for answer in ANSWERS]
    assert runs(enc.input_ids, enc.weights) == expected
    assert set(enc.weights) == {0.0, 1.0}
    rendered = tokenizer.apply_chat_template(conversation()["conversations"], tokenize=False)
    assert tokenizer.decode(enc.input_ids) == rendered  # the masks belong to the template's own rendering


def test_with_a_system_turn_the_answers_are_still_exactly_labelled(template):
    tokenizer, end_of_turn, _ = template
    record = conversation()
    record["conversations"].insert(0, {"role": "system", "content": "Answer in one line."})
    enc = encode_record(record, tokenizer, max_length=100_000)
    pieces = [tokenizer.decode(run) for run in runs(enc.input_ids, enc.weights)]
    assert pieces == [answer + end_of_turn for answer in ANSWERS]


def test_context_weight_lands_on_the_user_text_not_on_a_default_system_prompt(template):
    tokenizer, end_of_turn, default_phrase = template
    question = default_phrase or "How many ships?"  # a user turn that repeats the default system prompt's words
    record = conversation(first_user=question, later_user=question)
    enc = encode_record(record, tokenizer, max_length=100_000, context_weight=0.5)
    user_runs = [tokenizer.decode(run) for run in runs(enc.input_ids, enc.weights, 0.5)]
    assert user_runs == [question] * len(ANSWERS)
    if default_phrase:  # the default system prompt is the first turn: nothing in it carries weight
        first_end = enc.input_ids.index(tokenizer.convert_tokens_to_ids(end_of_turn))
        assert not any(enc.weights[:first_end + 1])
    assert [tokenizer.decode(run) for run in runs(enc.input_ids, enc.weights)] == [a + end_of_turn for a in ANSWERS]


def test_cutting_the_document_keeps_the_question_and_the_labelled_answers(template):
    tokenizer, end_of_turn, _ = template
    full = encode_record(conversation(), tokenizer, max_length=100_000)
    enc = encode_record(conversation(), tokenizer, max_length=len(full.input_ids) - 200)
    assert enc.truncated and len(enc.input_ids) == len(full.input_ids) - 200
    text = tokenizer.decode(enc.input_ids)
    assert "Line 0:" in text and "Line 59:" in text and "Line 30:" not in text
    assert "\n\nHow many ships?" + end_of_turn in text
    assert runs(enc.input_ids, enc.weights) == runs(full.input_ids, full.weights)


@pytest.mark.parametrize("turn_end, labelled_end", [
    ("'\n<|eot_id|>\n'", "\n<|eot_id|>"),  # a newline inside the turn is the answer's; the one after is not
    ("'\n'", "\n"),  # no end-of-turn token: the newline is all that ends the turn, so it carries loss
])
def test_what_follows_the_answer_carries_loss_up_to_the_end_of_turn_token(turn_end, labelled_end):
    tokenizer = build_tokenizer(chat_template=(
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + " + turn_end + " }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"))
    enc = encode_record(conversation(), tokenizer, max_length=100_000)
    # Where the header's trailing space and the answer's first word are one token (" 42"), it is the answer's.
    pieces = [tokenizer.decode(run) for run in runs(enc.input_ids, enc.weights)]
    assert [piece.removeprefix(" ") for piece in pieces] == [a + labelled_end for a in ANSWERS]


def test_the_llama3_template_under_test_is_the_shipped_one():
    assert build_tokenizer().chat_template == LLAMA3_CHAT_TEMPLATE
