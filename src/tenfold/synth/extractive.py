"""The offline extractive generator: question-answer pairs built from the text itself, no LLM needed.

It answers the same requests as an LLM backend, with the same JSON shape, so a whole synth run works
on a CPU with no network and no API key. Questions come from the text's own sentences; answers are
spans of it, verbatim:

  a fact sentence "X is Y ."          ->  "what is X ?"                        answer "Y"
  any other sentence                   ->  'Which word is missing: "... ___ ..."?'  answer the word
  two far-apart facts (multi detail)   ->  "what is X1 , and what is X2 ?"     answer both sentences
  two numeric facts (multi detail)     ->  "which is larger : X1 or X2 ?"      answer "X1 : Y1 , against Y2"
  texts sharing a word (heterogeneous) ->  'Texts 1 and 3 both mention "w". What does each say about it?'
  a capitalised name seen 2+ times     ->  biography: the sentences that name it, in order
Quality is what extraction gives: grammatical and correct, never insightful. Use it for pipelines,
tests and the toy demo; use an LLM for training data meant to teach a real model.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from tenfold.synth.replies import STOPWORDS, words

FACT = re.compile(r"^(?P<subject>\S.{0,80}?)\s+(?P<verb>is|are|was|were)\s+"
                  r"(?P<value>[^\s].{0,100}?)\s*(?P<end>[.!?])?$")
NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


@dataclass
class Fact:
    sentence: str
    subject: str
    verb: str
    value: str
    spaced: bool  # "... 42 ." (punctuation as its own token, as in the toy world) rather than "... 42."


def sentences(text: str) -> list[str]:
    parts = re.split(r"\n+|(?<=[.!?])\s+(?=[A-Z0-9\"'(])", text)
    return [p.strip() for p in parts if len(p.split()) >= 3]


def fact(sentence: str) -> Fact | None:
    match = FACT.match(sentence)
    if not match or len(match["subject"].split()) > 8 or len(match["value"].split()) > 12:
        return None
    return Fact(sentence, match["subject"], match["verb"], match["value"], sentence.endswith(" ."))


def fact_question(f: Fact) -> str:
    first, _, rest = f.subject.partition(" ")
    if first.lower() in STOPWORDS:  # "The cat is ..." -> "What is the cat?"
        f = Fact(f.sentence, f"{first.lower()} {rest}".strip(), f.verb, f.value, f.spaced)
    return f"what {f.verb} {f.subject} ?" if f.spaced else f"What {f.verb} {f.subject}?"


def cloze(sentence: str) -> dict | None:
    tokens = sentence.split()
    if len(tokens) < 5:
        return None
    plain = [re.sub(r"^\W+|\W+$", "", t) for t in tokens]
    candidates = [i for i, w in enumerate(plain) if NUMBER.match(w)]
    candidates = candidates or [i for i, w in enumerate(plain) if i > 0 and w[:1].isupper()]
    candidates = candidates or sorted((i for i, w in enumerate(plain) if w.lower() not in STOPWORDS and w),
                                      key=lambda i: -len(plain[i]))[:1]
    if not candidates:
        return None
    i = candidates[0]
    blanked = " ".join(t.replace(plain[i], "___", 1) if j == i else t for j, t in enumerate(tokens))
    return {"question": f'Which word is missing from this sentence of the text: "{blanked}"?', "answer": plain[i]}


def spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (all of them if there are n or fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(k * (len(items) - 1) / max(n - 1, 1))] for k in range(n)]


def single_detail(text: str, n: int) -> list[dict]:
    all_sentences = sentences(text)
    facts = [f for f in map(fact, all_sentences) if f]
    items = [{"question": fact_question(f), "answer": f.value} for f in spread(facts, n)]
    fact_sentences = {f.sentence for f in facts}
    clozes = [c for c in map(cloze, (s for s in all_sentences if s not in fact_sentences)) if c]
    return items + spread(clozes, n - len(items))


def multi_detail(text: str, n: int) -> list[dict]:
    facts = [f for f in map(fact, sentences(text)) if f]
    items, half = [], len(facts) // 2
    for a, b in zip(facts[:half], facts[half:]):  # partners half a document apart
        if NUMBER.match(a.value) and NUMBER.match(b.value) and float(a.value) != float(b.value):
            big, small = (a, b) if float(a.value) > float(b.value) else (b, a)
            items.append({"question": f"which is larger : {a.subject} or {b.subject} ?" if a.spaced
                          else f"Which is larger: {a.subject} or {b.subject}?",
                          "answer": f"{big.subject} : {big.value} , against {small.value}"})
        joined = f"{fact_question(a).rstrip(' ?')} , and {fact_question(b)}" if a.spaced else \
            f"{fact_question(a).rstrip('?')}, and {fact_question(b)[0].lower()}{fact_question(b)[1:]}"
        items.append({"question": joined, "answer": f"{a.sentence} {b.sentence}"})
    items = spread(items, n)
    if len(items) < n:  # too few facts: pair far-apart sentences as a double cloze
        clozes = [c for c in map(cloze, sentences(text)) if c]
        half, pairs = len(clozes) // 2, []
        for a, b in zip(clozes[:half], clozes[half:]):
            question = a["question"].split(": ", 1)[1].rstrip("?") + " and " + b["question"].split(": ", 1)[1]
            pairs.append({"question": f"Which words are missing from these two sentences of the text: {question}",
                          "answer": f"{a['answer']} ; {b['answer']}"})
        items += spread(pairs, n - len(items))
    return items


def heterogeneous(texts: list[str], n: int) -> list[dict]:
    per_text = [sentences(t) for t in texts]
    items = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            shared = (Counter(w for w in words(texts[i]) if w not in STOPWORDS and len(w) > 2)
                      & Counter(w for w in words(texts[j]) if w not in STOPWORDS and len(w) > 2))
            if not shared:
                continue
            word = sorted(shared.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            said_i = next((s for s in per_text[i] if word in words(s)), None)
            said_j = next((s for s in per_text[j] if word in words(s)), None)
            if said_i and said_j:
                items.append({"question": f'Texts {i + 1} and {j + 1} both mention "{word}". '
                                          f'What does each say about it?',
                              "answer": f'Text {i + 1}: "{said_i}" Text {j + 1}: "{said_j}"'})
    for i, text_sentences in enumerate(per_text):  # what tells the texts apart
        if text_sentences:
            items.append({"question": f'Which text says: "{text_sentences[len(text_sentences) // 2]}"?',
                          "answer": f"Text {i + 1}."})
    return spread(items, n)


def biography(text: str, n: int, sentences_per_character: int = 5) -> list[dict]:
    all_sentences = sentences(text)
    names = Counter()
    for sentence in all_sentences:
        for token in sentence.split()[1:]:  # a sentence's first word is capitalised anyway
            name = re.sub(r"^\W+|\W+$", "", token)
            if len(name) > 1 and name[0].isupper() and name[1:].islower() and name.lower() not in STOPWORDS:
                names[name] += 1
    items = []
    for name, count in sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[:n]:
        if count < 2:
            break
        mentions = [s for s in all_sentences if re.search(rf"\b{re.escape(name)}\b", s)]
        items.append({"character": name, "biography": " ".join(spread(mentions, sentences_per_character))})
    return items


def extract(task: str, texts: list[str], n: int) -> str:
    """The JSON reply an LLM would give for this task, built by extraction."""
    if task == "single_detail":
        items = single_detail("\n".join(texts), n)
    elif task == "multi_detail":
        items = multi_detail("\n".join(texts), n)
    elif task == "multi_detail_heterogeneous":
        items = heterogeneous(texts, n)
    elif task == "biography":
        items = biography("\n".join(texts), n)
    else:
        raise ValueError(f"unknown task {task!r}")
    return json.dumps(items, ensure_ascii=False)
