"""The prompts `tenfold synth` sends to the generator, one per task, as data.

Each task's prompt shows a context and asks for a JSON list whose items have the keys in `keys`;
`turn` says how one item becomes one user/assistant turn of the training conversation. The paper's
prompts (FlagEmbedding's longllm_qlora/data_pipeline) ask GPT-4 at temperature 0 for 4 questions
per 4096-token chunk (single detail), 10 questions over a whole book (multi detail) and one summary
per main character (biography); these are our own words for the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("single_detail", "multi_detail", "multi_detail_heterogeneous", "biography")

QA_SHAPE = '[{"question": "<question>", "answer": "<answer>"}, ...]'
BIOGRAPHY_SHAPE = '[{"character": "<name>", "biography": "<biography>"}, ...]'


@dataclass(frozen=True)
class Prompt:
    template: str  # fields: {context}, {n}, and {what} where a task shows several kinds of context
    keys: tuple[str, ...]  # every item of the reply's JSON list must have these keys, with non-empty strings
    question: str  # the user turn made from an item (format fields: the item's keys)
    answer: str  # the assistant turn made from an item


PROMPTS = {
    "single_detail": Prompt(
        template=(
            "Here is an excerpt from a longer document.\n"
            "=== EXCERPT ===\n{context}\n=== END OF EXCERPT ===\n\n"
            "Write {n} quiz questions that a careful reader can answer from this excerpt alone, each with its "
            "correct answer. Spread the questions over the whole excerpt and vary their kind (who, what, when, "
            "why, how many). Use no outside knowledge: every answer must be stated in, or follow directly "
            "from, the excerpt. Keep answers short and specific.\n\n"
            f"Reply with JSON only, a list of objects: {QA_SHAPE}"),
        keys=("question", "answer"), question="{question}", answer="{answer}"),
    "multi_detail": Prompt(
        template=(
            "Here is {what}.\n"
            "=== TEXT ===\n{context}\n=== END OF TEXT ===\n\n"
            "Write {n} exam questions about this text, with their answers, in two steps. First, note the main "
            "people, things, events and claims it contains. Second, choose groups of related details that lie "
            "far apart in the text, and ask questions that need several of them together: to aggregate, count, "
            "compare, order in time, or reason from one to another. No question may be answerable from a single "
            "sentence. Vary the wording, and use only the text above.\n\n"
            f"Reply with JSON only, a list of objects: {QA_SHAPE}"),
        keys=("question", "answer"), question="{question}", answer="{answer}"),
    "multi_detail_heterogeneous": Prompt(
        template=(
            "Here are {what}, numbered.\n"
            "=== TEXTS ===\n{context}\n=== END OF TEXTS ===\n\n"
            "Write {n} questions, with their answers, about how these texts relate to each other: what they "
            "have in common, where they differ or disagree, and which text says what. Every question must need "
            "at least two of the texts; refer to texts by their numbers. Use only the texts above.\n\n"
            f"Reply with JSON only, a list of objects: {QA_SHAPE}"),
        keys=("question", "answer"), question="{question}", answer="{answer}"),
    "biography": Prompt(
        template=(
            "Here is a book.\n"
            "=== BOOK ===\n{context}\n=== END OF BOOK ===\n\n"
            "Summarize the lives of the book's main characters, in two steps. First, find its main characters "
            "(at most {n}). Second, write a biography of each from the book alone: who they are, what they do, "
            "what happens to them and how they change, in the order of the story, accurate and complete.\n\n"
            f"Reply with JSON only, a list of objects: {BIOGRAPHY_SHAPE}"),
        keys=("character", "biography"),
        question="Write a biography of {character}, based only on the text above.", answer="{biography}"),
}

# How each task's context is described in the prompt's {what}.
WHOLE_DOCUMENT = "a long document"
DISTANT_EXCERPTS = "{k} excerpts, in order, from far-apart places of one long document"
SEVERAL_TEXTS = "{k} texts on related subjects"
EXCERPT_SEPARATOR = "\n\n[...]\n\n"


def render(task: str, context: str, n: int, what: str = "") -> str:
    # plain replacement, context last: the JSON shapes' braces and the context's own text stay as they are
    template = PROMPTS[task].template
    return template.replace("{n}", str(n)).replace("{what}", what).replace("{context}", context)


def numbered_texts(texts: list[str]) -> str:
    return "\n\n".join(f"Text {i}:\n{text.strip()}" for i, text in enumerate(texts, start=1))
