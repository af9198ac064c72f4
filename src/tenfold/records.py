"""The training record: token ids and per-token loss weights (chat-template loss spans, middle truncation).

Conversations are rendered with the tokenizer's own chat template (Llama-3's, ChatML, one that adds a
default system prompt...); only the assistant completions carry loss unless `context_weight` says
otherwise. An answer's span runs from the end of the template's generation prompt (the role header)
through its end-of-turn token (<|eot_id|>, <|im_end|>); whitespace the template writes after that
token (ChatML's newline) belongs to no turn and carries no loss, since generation stops at the token.
Plain-text records carry loss on every token. Conversations too long for `max_length` lose
tokens from the middle of the document in their first user turn; the question and every other
turn are kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenfold.errors import RecordError, UserError

ROLES = ("user", "assistant", "system")
MIN_TAIL_TOKENS = 32  # kept at the end of a first user turn that has no "\n\n" before its question


@dataclass
class Encoded:
    id: str
    input_ids: list[int]
    weights: list[float]  # weights[t]: loss weight for predicting token t from tokens < t; weights[0] == 0
    truncated: bool  # True if tokens were removed to fit max_length


def record_tokens(record: dict, tokenizer) -> int:
    """A record's length in the target model's tokens, as training will see it (chat template included)."""
    if "conversations" in record and tokenizer.chat_template:
        return len(tokenizer.apply_chat_template(record["conversations"], tokenize=True, return_dict=True)["input_ids"])
    text = record.get("text") or "\n".join(t["content"] for t in record.get("conversations", []))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_record(record: dict, tokenizer, max_length: int, context_weight: float = 0.0) -> Encoded | None:
    """Encode a conversation or plain-text record; None if it cannot fit `max_length`."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if not isinstance(record, dict):
        raise RecordError(f"record {record!r:.60}: not a JSON object; each record must be a dict "
                          f"with 'conversations' or 'text'")
    record_id = str(record.get("id", "<no id>"))
    if "conversations" in record:
        return _encode_conversation(record_id, _validated_turns(record_id, record["conversations"]),
                                    tokenizer, max_length, context_weight)
    if "text" in record:
        if not isinstance(record["text"], str):
            raise RecordError(f"record {record_id!r}: 'text' is a {type(record['text']).__name__}; "
                              f"make it a string")
        return _encode_text(record_id, record["text"], tokenizer, max_length)
    raise RecordError(f"record {record_id!r}: has neither 'conversations' nor 'text'; "
                      f"add a list of chat turns under 'conversations' or a document under 'text'")


def _validated_turns(record_id: str, turns) -> list[dict]:
    def fail(problem: str, fix: str):
        raise RecordError(f"record {record_id!r}: {problem}; {fix}")

    if not isinstance(turns, list) or not turns:
        fail("'conversations' is empty or not a list", "give a non-empty list of {'role', 'content'} turns")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str) or "role" not in turn:
            fail(f"turn {i} lacks a 'role' or a string 'content'", "give every turn both")
        if turn["role"] not in ROLES:
            fail(f"turn {i} has role {turn['role']!r}", f"use one of {', '.join(ROLES)}")
    if not any(turn["role"] == "assistant" for turn in turns):
        fail("no assistant turn, so nothing to learn", "add at least one assistant answer")
    start = next(i for i, turn in enumerate(turns) if turn["role"] != "system")
    if turns[start]["role"] != "user":
        fail("the first non-system turn is not from the user", "start the conversation with the user turn")
    for i in range(start + 1, len(turns)):  # user, assistant, user, ...: a chat template assumes it
        expected = "assistant" if (i - start) % 2 else "user"
        if turns[i]["role"] != expected:
            fail(f"turn {i} is from the {turns[i]['role']} where the {expected} speaks next",
                 "alternate user and assistant turns after the system turns")
    return [{"role": turn["role"], "content": turn["content"]} for turn in turns]


def _encode_text(record_id: str, text: str, tokenizer, max_length: int) -> Encoded:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    truncated = len(ids) > max_length
    if truncated:
        ids = ids[:max_length]
    elif len(ids) < max_length and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return Encoded(record_id, ids, [0.0] + [1.0] * (len(ids) - 1), truncated)


def _encode_conversation(record_id: str, turns: list[dict], tokenizer, max_length: int,
                         context_weight: float) -> Encoded | None:
    if not tokenizer.chat_template:
        raise UserError("the tokenizer has no chat template, so conversations cannot be rendered; pass a "
                        "tokenizer that has one (an instruct model's) or set tokenizer.chat_template")

    def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    full = render(turns)
    spans = _assistant_spans(record_id, turns, render, full, _special_texts(tokenizer))

    # The context weight goes on what the user wrote (the document, the questions), never on the
    # template's markup: a header's "\n\n" is followed by the document in user turns and by the answer
    # in assistant turns, and LM loss on the former teaches a small model to start answers with text.
    context = _user_content_spans(record_id, turns, render, full) if context_weight else []
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    # A token belongs to the span it ends in: one that starts in the header and ends in the answer (" 42"
    # after a header "assistant:") is the answer's first token, as the model must write it.
    weights = [1.0 if any(s < b <= e for s, e in spans)
               else context_weight if any(s < b <= e for s, e in context) else 0.0 for _, b in offsets]
    weights[0] = 0.0
    overflow = len(ids) - max_length
    if overflow <= 0:
        return Encoded(record_id, ids, weights, False)

    first, context_range = _context_tokens(record_id, turns, render, full, offsets)
    if first is None or overflow > context_range:
        return None
    head = first + (context_range - overflow) // 2
    weights = weights[:head] + weights[head + overflow:]
    weights[head] = 0.0  # the first token after the cut cannot be predicted from the text before it
    return Encoded(record_id, ids[:head] + ids[head + overflow:], weights, True)


def _assistant_spans(record_id: str, turns: list[dict], render, full: str,
                     special: tuple[str, ...]) -> list[tuple[int, int]]:
    """Character ranges of the assistant answers, each with its end-of-turn token: from the end of the
    generation prompt (the role header) to the end of the turn's closing special token. Whitespace a
    template writes after that token (ChatML's "\\n" after <|im_end|>) belongs to no turn: generation stops
    at the token, so the model never writes it. Text before the token, a newline included, is the turn's."""
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] == "assistant":
            prefix, upto = render(turns[:i], add_generation_prompt=True), render(turns[:i + 1])
            if not (full.startswith(prefix) and upto.startswith(prefix) and full.startswith(upto)):
                raise UserError(f"record {record_id!r}: the chat template renders turn {i} differently depending "
                                f"on the turns after it, so assistant spans cannot be found; use a template whose "
                                f"rendering of a conversation's first turns is a prefix of the whole rendering")
            closed = upto.rstrip()
            end = len(closed) if closed.endswith(special) and len(closed) > len(prefix) else len(upto)
            spans.append((len(prefix), end))
    return spans


def _special_texts(tokenizer) -> tuple[str, ...]:
    """The special tokens' texts (eos, and added tokens marked special such as Llama-3's <|eot_id|>)."""
    added = (token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    return tuple({*tokenizer.all_special_tokens, *added} - {""})


def _content_start(turns: list[dict], i: int, render) -> int:
    """Where turn i's content begins in the rendering: after the turns before it, the default system prompt
    a template may add, and the turn's header (found by rendering a marker in place of the content)."""
    marker = "\x00tenfold-content\x00"
    return render(turns[:i] + [{**turns[i], "content": marker}]).index(marker)


def _user_content_spans(record_id: str, turns: list[dict], render, full: str) -> list[tuple[int, int]]:
    """Character ranges of every user turn's content inside the rendered conversation."""
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] == "user":
            content = turn["content"].strip()  # the template trims content (Llama-3's does)
            start = full.find(content, _content_start(turns, i, render))
            if start < 0:
                raise UserError(f"record {record_id!r}: the chat template does not write user turn {i} verbatim, "
                                f"so data.context_weight cannot find its tokens; set data.context_weight to 0")
            spans.append((start, start + len(content)))
    return spans


def _context_tokens(record_id: str, turns: list[dict], render, full: str,
                    offsets: list[tuple[int, int]]) -> tuple[int | None, int]:
    """(first index, count) of the tokens that may be cut: the document in the first user turn."""
    u = next(i for i, turn in enumerate(turns) if turn["role"] == "user")
    content = turns[u]["content"].strip()  # the template trims content (Llama-3's does)
    start = full.find(content, _content_start(turns, u, render))
    if start < 0:
        raise UserError(f"record {record_id!r}: the chat template does not write the first user turn verbatim, "
                        f"so its document cannot be located for truncation; use a template that keeps content as is")
    question_break = content.rfind("\n\n")
    end = start + (question_break if question_break >= 0 else len(content))
    inside = [t for t, (a, b) in enumerate(offsets) if start <= a and b <= end]
    if question_break < 0:
        inside = inside[:-MIN_TAIL_TOKENS]  # no separate question: protect the turn's end, where it usually is
    return (inside[0], len(inside)) if inside else (None, 0)
