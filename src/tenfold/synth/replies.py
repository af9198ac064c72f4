"""Check a generator's reply: parse its JSON list (repairing it where that is safe) and keep the good items.

Every rejection is counted by reason in a Counter:
  malformed_json      no JSON list could be read from the reply, even after safe repairs
  wrong_shape         the JSON is not a list of objects with the task's keys
  empty_field         an item lacks one of the task's keys, or it is not a non-empty string
  unsupported_answer  a single-detail answer whose words are mostly absent from its chunk
  no_items            a reply that parsed but held no usable item
Safe repairs: a ```json fence or chatter around the list, Python-style quotes (the paper's own prompt
shows its shape with single quotes), trailing commas, a list wrapped in an object ({"questions": [...]}).
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter

STOPWORDS = set("a an the of in on at to for from by with and or but is are was were be been being it its "
                "this that these those he she they them his her their what which who whom whose when where why "
                "how does do did has have had not no as into than then so".split())


def _candidates(reply: str):
    text = reply.strip()
    yield text
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        yield fenced.group(1).strip()
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        yield text[start:end + 1]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        yield text[start:end + 1]


def parse_json_list(reply: str) -> list | None:
    """The JSON list in a reply, or None if none can be read safely."""
    for candidate in _candidates(reply):
        for attempt in (candidate, re.sub(r",\s*([\]}])", r"\1", candidate)):
            value = None
            try:
                value = json.loads(attempt)
            except json.JSONDecodeError:
                try:  # literal_eval only builds literals: safe for Python-quoted lists
                    value = ast.literal_eval(attempt)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    continue
            if isinstance(value, dict):
                lists = [v for v in value.values() if isinstance(v, list)]
                value = lists[0] if len(lists) == 1 else [value]
            if isinstance(value, (list, tuple)):
                return list(value)
    return None


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def supported(answer: str, source: str, threshold: float = 0.5) -> bool:
    """True if at least `threshold` of the answer's content words occur in the source text."""
    answer_words = [w for w in words(answer) if w not in STOPWORDS] or words(answer)
    if not answer_words:
        return False
    source_words = set(words(source))
    return sum(w in source_words for w in answer_words) / len(answer_words) >= threshold


def one_line(text: str) -> str:
    """Questions go after the document's last blank line in the first user turn: keep them free of blank lines."""
    return re.sub(r"\s*\n\s*\n\s*", "\n", text.strip())


def reply_items(reply: str) -> tuple[list[dict] | None, str | None]:
    """(the reply's items, None), or (None, why the reply as a whole is unusable: malformed_json,
    wrong_shape). Such a reply (a refusal, a list cut short, a proxy's page) holds no item at all, so it
    is asked again and never cached; a well-shaped reply is an answer, even when items are rejected."""
    items = parse_json_list(reply)
    if items is None:
        return None, "malformed_json"
    if not all(isinstance(item, dict) for item in items):
        return None, "wrong_shape"
    return items, None


def reply_problem(reply: str) -> str | None:
    return reply_items(reply)[1]


def valid_items(reply: str, keys: tuple[str, ...], rejected: Counter, support: str | None = None) -> list[dict]:
    """The reply's usable items, with `keys` only; reasons for everything dropped are added to `rejected`."""
    items, problem = reply_items(reply)
    if problem:
        rejected[problem] += 1
        return []
    kept = []
    for item in items:
        values = {key: item.get(key) for key in keys}
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip()
                   for v in values.values()):
            rejected["empty_field"] += 1
            continue
        values = {key: one_line(str(v)) for key, v in values.items()}
        if support is not None and not supported(values[keys[-1]], support):
            rejected["unsupported_answer"] += 1
            continue
        kept.append(values)
    if not items:
        rejected["no_items"] += 1
    return kept
