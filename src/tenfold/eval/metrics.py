"""Scores shared by the synthetic benchmarks: ROUGE-L recall, substring matches, the LLM judge."""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

from tenfold.generation import openai_client

_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"])  # lowercases, keeps [a-z0-9] tokens, no stemming


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Fraction of the reference's tokens found, in order, in the prediction (LCS / len(reference))."""
    return _ROUGE_L.score(reference, prediction)["rougeL"].recall


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's niah/vt/cwe score: the fraction of references found in the prediction (case-insensitive)."""
    return sum(ref.lower() in prediction.lower() for ref in references) / len(references)


# The NIAH judge: gkamradt's accuracy criteria inside LangChain's labeled_score_string prompt.
JUDGE_CRITERIA = (
    "accuracy: Score 1: The answer is completely unrelated to the reference.\n"
    "Score 3: The answer has minor relevance but does not align with the reference.\n"
    "Score 5: The answer has moderate relevance but contains inaccuracies.\n"
    "Score 7: The answer aligns with the reference but has minor omissions.\n"
    "Score 10: The answer is completely accurate and aligns perfectly with the reference.\n"
    "Only respond with a numberical score"
)
JUDGE_PROMPT = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. For this evaluation, you should primarily consider the "
    "following criteria:\n{criteria}\n[Ground truth]\n{reference}\nBegin your evaluation by providing a short "
    "explanation. Be as objective as possible. After providing your explanation, you must rate the response on a "
    "scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n"
    "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{prediction}\n[The End of Assistant's Answer]"
)


class Judge:
    """A 1-10 judge through any OpenAI-compatible endpoint (temperature 0); the key comes from the environment."""

    def __init__(self, model: str = "gpt-3.5-turbo-0125", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY"):
        self.model = model
        self.client = openai_client(base_url, api_key_env)

    def __call__(self, question: str, reference: str, prediction: str) -> int:
        prompt = JUDGE_PROMPT.format(criteria=JUDGE_CRITERIA, reference=reference, question=question,
                                     prediction=prediction)
        reply = self.client.chat.completions.create(
            model=self.model, temperature=0,
            messages=[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}])
        text = reply.choices[0].message.content or ""
        match = re.search(r"\[\[(\d+)\]\]", text)
        if not match or not 1 <= int(match.group(1)) <= 10:
            raise ValueError(f"the judge {self.model} gave no [[1..10]] rating: {text[:200]!r}")
        return int(match.group(1))
