"""The paper's four synthesis tasks: what each shows the generator, and how replies become a conversation.

A Context is one future training record: the long text it opens with, the generator requests whose
replies supply its question-answer pairs, and for single-detail requests the chunk their answers
must be found in. The pairs of one context become one multi-turn conversation (README, Training data): the
context and the first question in the first user turn, one more user/assistant turn per pair.

  single_detail               a few chunks of a document, each asked about alone; posed against the whole
  multi_detail                the whole document when the generator's context holds it, else several
                              far-apart chunks shown together; questions needing several details
  multi_detail_heterogeneous  short texts of one embedding cluster, numbered and concatenated; questions
                              on what they share and where they differ
  biography                   the main characters of a book, one biography each
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenfold.synth.corpus import Document, chunk_text, text_id
from tenfold.synth.extractive import spread
from tenfold.synth.generators import Request
from tenfold.synth.prompts import (
    DISTANT_EXCERPTS,
    EXCERPT_SEPARATOR,
    PROMPTS,
    SEVERAL_TEXTS,
    WHOLE_DOCUMENT,
    numbered_texts,
    render,
)

PROMPT_OVERHEAD_TOKENS = 512  # the instructions around a context, with room to spare


@dataclass
class Context:
    id: str
    task: str
    source: str
    text: str  # the long context that opens the conversation
    requests: list[Request] = field(default_factory=list)
    supports: list[str | None] = field(default_factory=list)  # per request: where its answers must be found
    meta: dict = field(default_factory=dict)


def context_id(task: str, key: str) -> str:
    return f"{task}-{key[:16]}"


def fits_generator(n_tokens: int, generator) -> bool:
    limit = generator.context_tokens
    return limit is None or n_tokens + PROMPT_OVERHEAD_TOKENS + getattr(generator, "max_new_tokens", 0) <= limit


def document_context(task: str, document: Document, n_tokens: int, count_tokens, settings, generator) -> Context:
    """A single_detail, multi_detail or biography context over one long document."""
    context = Context(context_id(task, document.id), task, document.source, document.text.strip(),
                      meta={"document": document.id, "origin": document.origin, "context_tokens": n_tokens})
    if task == "single_detail":
        chunks = chunk_text(document.text, count_tokens, settings.chunk_tokens)
        for chunk in spread(chunks, settings.single_detail_chunks):
            excerpt = chunk.text.strip()
            context.requests.append(Request(task, render(task, excerpt, settings.questions_per_chunk), [excerpt],
                                            settings.questions_per_chunk))
            context.supports.append(excerpt)
        context.meta["chunks"] = len(chunks)
        return context
    n = settings.multi_detail_questions if task == "multi_detail" else settings.biography_characters
    if fits_generator(n_tokens, generator):
        texts, what, mode = [context.text], WHOLE_DOCUMENT, "whole"
    else:
        chunks = chunk_text(document.text, count_tokens, settings.chunk_tokens)
        texts = [c.text.strip() for c in spread(chunks, settings.multi_detail_excerpts)]
        what, mode = DISTANT_EXCERPTS.format(k=len(texts)), "excerpts"
    context.requests.append(Request(task, render(task, EXCERPT_SEPARATOR.join(texts), n, what), texts, n))
    context.supports.append(None)
    context.meta["mode"] = mode
    return context


def heterogeneous_context(documents: list[Document], settings) -> Context:
    texts = [d.text.strip() for d in documents]
    shown = numbered_texts(texts)
    task, n = "multi_detail_heterogeneous", settings.multi_detail_questions
    context = Context(context_id(task, text_id("".join(d.id for d in documents))), task,
                      "+".join(sorted({d.source for d in documents})), shown,
                      meta={"documents": [d.id for d in documents], "texts": len(texts)})
    context.requests.append(Request(task, render(task, shown, n, SEVERAL_TEXTS.format(k=len(texts))), texts, n))
    context.supports.append(None)
    return context


def conversation_record(context: Context, items: list[dict], generator) -> dict | None:
    """The training record of a context from its validated items (None if no item survived)."""
    prompt = PROMPTS[context.task]
    turns, asked = [], set()
    for item in items:
        question, answer = prompt.question.format(**item), prompt.answer.format(**item)
        if question.lower() in asked:
            continue
        asked.add(question.lower())
        turns.append({"role": "user", "content": f"{context.text}\n\n{question}" if not turns else question})
        turns.append({"role": "assistant", "content": answer})
    if not turns:
        return None
    meta = dict(context.meta, generator=f"{generator.backend}/{generator.model}", questions=len(turns) // 2)
    return {"id": context.id, "source": context.source, "task": context.task, "conversations": turns, "meta": meta}
