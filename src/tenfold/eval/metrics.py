"""Scores shared by the synthetic benchmarks: ROUGE-L (F1 and recall), substring matches, the LLM judge."""

from __future__ import annotations

import functools
import re

from rouge import Rouge
from rouge_score import rouge_scorer

from tenfold.errors import UserError
from tenfold.generation import openai_client

_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"])  # lowercases, keeps [a-z0-9] tokens, no stemming


def rouge_l_f1(prediction: str, reference: str) -> float:
    """The `rouge` package's ROUGE-L F1, as the paper's needle and LongBench code score (any error, such as
    an empty prediction, scores 0, as their bare `except` does)."""
    try:
        return Rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"]
    except Exception:
        return 0.0


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Fraction of the reference's tokens found, in order, in the prediction (LCS / len(reference))."""
    return _ROUGE_L.score(reference, prediction)["rougeL"].recall


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's niah/vt/cwe score: the fraction of references found in the prediction (case-insensitive)."""
    return sum(ref.lower() in prediction.lower() for ref in references) / len(references)


# The needle judge's rubric: gkamradt's accuracy criteria, as his harness and the paper's eval_needle.py both
# hand them to LangChain (a triple-quoted string: a newline, then every line indented by 16 spaces).
JUDGE_CRITERIA = {"accuracy": "".join("\n" + " " * 16 + line for line in (
    "Score 1: The answer is completely unrelated to the reference.",
    "Score 3: The answer has minor relevance but does not align with the reference.",
    "Score 5: The answer has moderate relevance but contains inaccuracies.",
    "Score 7: The answer aligns with the reference but has minor omissions.",
    "Score 10: The answer is completely accurate and aligns perfectly with the reference.",
    "Only respond with a numberical score"))}  # sic, "numberical"


@functools.lru_cache(maxsize=None)
def labeled_score_string(criteria: tuple[tuple[str, str], ...]):
    """LangChain's `labeled_score_string` evaluator (what load_evaluator("labeled_score_string", criteria=...,
    llm=...) builds), on a stand-in model: the judge takes its prompt and its output parser, and sends the
    prompt to its own endpoint. The prompt is LangChain's text, so it is read from LangChain at run time."""
    try:
        from langchain_classic.evaluation.scoring.eval_chain import LabeledScoreStringEvalChain
    except ImportError:
        try:  # langchain < 1.0 (the paper ran 0.1.x) kept the evaluators in langchain itself
            from langchain.evaluation.scoring.eval_chain import LabeledScoreStringEvalChain
        except ImportError:
            raise UserError("the judge asks with LangChain's labeled_score_string prompt (the paper's and "
                            "gkamradt's judge), read from LangChain: pip install langchain-classic") from None
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    return LabeledScoreStringEvalChain.from_llm(llm=FakeListChatModel(responses=[""]), criteria=dict(criteria))


class Judge:
    """A 1-10 judge through any OpenAI-compatible endpoint (temperature 0); the key comes from the environment."""

    def __init__(self, model: str = "gpt-3.5-turbo-0125", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY"):
        self.model = model
        self.client = openai_client(base_url, api_key_env)

    def __call__(self, question: str, reference: str, prediction: str, criteria: dict | None = None) -> int:
        """LangChain's labeled_score_string on (input=question, reference, prediction): its two messages, sent
        at temperature 0; the rating is what its parser reads ("[[N]]", N in 1..10), else a ValueError."""
        evaluator = labeled_score_string(tuple((criteria or JUDGE_CRITERIA).items()))
        messages = evaluator.prompt.format_messages(input=question, reference=reference, prediction=prediction)
        reply = self.client.chat.completions.create(
            model=self.model, temperature=0,
            messages=[{"role": {"human": "user"}.get(m.type, m.type), "content": m.content} for m in messages])
        text = reply.choices[0].message.content or ""
        try:
            return int(evaluator.output_parser.parse(text)["score"])
        except ValueError:
            raise ValueError(f"the judge {self.model} gave no [[1..10]] rating: {text[:200]!r}") from None
