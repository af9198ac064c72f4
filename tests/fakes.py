"""The one stand-in backend of the tests: a tenfold.generation.Backend that answers from a function, or
passes generation on to a real backend, and records every call."""

from __future__ import annotations

from tenfold.generation import Backend


class FakeBackend(Backend):
    """Answers each prompt with `answer(prompt)`, or, without `answer`, with `inner`'s generation (a real
    backend, whose tokenizer, max_length, batch_size, name, description and identity it takes unless given;
    without one: 4096 tokens, batches of 8, prompts counted in words without a tokenizer). `calls` holds
    every generate call (its arguments by name); the call after `die_after` calls raises KeyboardInterrupt,
    as a killed run."""

    def __init__(self, answer=None, inner: Backend | None = None, tokenizer=None, max_length: int | None = None,
                 batch_size: int | None = None, name: str | None = None, die_after: int | None = None):
        self.answer, self.inner, self.die_after = answer, inner, die_after
        self.tokenizer = tokenizer if tokenizer is not None else getattr(inner, "tokenizer", None)
        self.max_length = max_length or getattr(inner, "max_length", 4096)
        self.batch_size = batch_size or getattr(inner, "batch_size", 8)
        self.name = name or getattr(inner, "name", "fake")
        self.calls: list[dict] = []

    @property
    def prompts(self) -> list[str]:
        return [prompt for call in self.calls for prompt in call["prompts"]]

    def generate(self, prompts, max_new_tokens, chat=True, answer_prefix="", controls=None):
        if self.die_after is not None and len(self.calls) >= self.die_after:
            raise KeyboardInterrupt
        self.calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "chat": chat,
                           "answer_prefix": answer_prefix, "controls": controls})
        if self.answer is not None:
            return [self.answer(prompt) for prompt in prompts]
        return self.inner.generate(prompts, max_new_tokens, chat, answer_prefix, controls)

    def prompt_length(self, prompt, chat=True, answer_prefix=""):
        if self.inner is not None:
            return self.inner.prompt_length(prompt, chat, answer_prefix)
        if self.tokenizer is None:
            return len((prompt + answer_prefix).split())
        return super().prompt_length(prompt, chat, answer_prefix)

    def describe(self):
        return self.inner.describe() if self.inner is not None else {"backend": self.name}

    def identity(self):
        return self.inner.identity() if self.inner is not None else super().identity()
