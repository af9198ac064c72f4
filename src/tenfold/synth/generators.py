"""Generator backends for `tenfold synth`: each turns a prompt into a reply, asynchronously.

  offline       questions and answers extracted from the text itself (tenfold.synth.extractive); no LLM
  openai        any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, `transformers serve`) via the openai
                client: requests/tokens per minute and a concurrency that adapts to 429s (data/limits.py),
                retries with exponential back-off on 429, 5xx, time-outs and unreadable replies (honouring
                Retry-After), a request time-out, a token and cost tally
  transformers  a local causal LM with a chat template (tenfold.generation.TransformersBackend), greedy
                decoding (sampling at a temperature above 0), one request at a time

The openai client comes from tenfold.generation.openai_client: the API key is read from the environment
variable the settings name and is kept only inside the client: it is never logged, cached or written;
error messages are scrubbed of it all the same.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Callable

from tenfold.errors import RecipeError, UserError
from tenfold.generation import TransformersBackend, openai_client
from tenfold.synth import limits
from tenfold.synth.extractive import extract


@dataclass
class Request:
    task: str
    prompt: str
    texts: list[str]  # the raw texts the prompt shows (the offline generator reads these, not the prompt)
    n: int  # how many items the prompt asks for


@dataclass
class Reply:
    text: str | None  # None: the request failed for good (see error)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Tally:
    requests: int = 0  # attempts sent, retries included
    retries: int = 0
    failed: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict = field(default_factory=dict)  # kind -> count, over all attempts
    failed_by: dict = field(default_factory=dict)  # kind of the last error -> requests that failed for good


Check = Callable[[str], "str | None"]  # a reply's content -> why it is unusable (an error kind), or None


def give_up(tally: Tally, kind: str, message: str) -> Reply:
    """A request that failed for good: counted by kind; its context waits for a rerun."""
    tally.failed += 1
    tally.failed_by[kind] = tally.failed_by.get(kind, 0) + 1
    return Reply(None, error=message)


def checked(reply: Reply, check: Check | None, tally: Tally) -> Reply:
    """A local generator's reply, or a failure if its content is unusable: asking again at once would
    give the same text, so it is left to a rerun (and never cached)."""
    problem = check(reply.text) if check and reply.text is not None else None
    return give_up(tally, problem, f"{problem}: a reply of {len(reply.text)} characters") if problem else reply


class OfflineGenerator:
    backend, model = "offline", "extractive-1"
    context_tokens = None  # reads any length

    def __init__(self):
        self.tally = Tally()

    async def complete(self, request: Request, check: Check | None = None) -> Reply:
        self.tally.requests += 1
        return checked(Reply(extract(request.task, request.texts, request.n)), check, self.tally)


class OpenAIGenerator:
    backend = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, request_timeout: float = 600.0,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, max_new_tokens: int = 4096,
                 temperature: float = 0.0, context_tokens: int | None = 128_000,
                 requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self.model, self.context_tokens = model, context_tokens
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        # The client's own retries are off: ours count every attempt for the summary and also retry a
        # 200 whose body is not a chat completion (a proxy's error page), which the client does not.
        self.client = openai_client(base_url, api_key_env, asynchronous=True, max_retries=0, timeout=request_timeout)
        self.limiter = limits.RequestLimiter(concurrency, requests_per_minute, tokens_per_minute)
        self.tally = Tally()

    def scrub(self, message: str) -> str:
        """The message without the key the client sends."""
        return message.replace(self.client.api_key, "***")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.backoff_max)
            except ValueError:
                pass  # an HTTP date: fall back to our own back-off
        return min(self.backoff_base * 2 ** attempt, self.backoff_max) * (0.5 + random.random() / 2)

    async def complete(self, request: Request, check: Check | None = None) -> Reply:
        """The reply, or Reply(None) once the budget of attempts is spent. A 200 whose content `check`
        finds unusable is paid for and then retried like a transport error, from the same budget."""
        error, tokens = "unknown", limits.estimated_tokens(request.prompt, self.max_new_tokens)
        for attempt in range(self.max_retries + 1):
            generation, outcome = await self.limiter.acquire(tokens), "error"
            try:
                reply, error, retry_after = await self._attempt(request, check)
                outcome = "rate_limited" if error == "http_429" else "error" if error else "ok"
            finally:
                await self.limiter.release(generation, outcome)
            if reply is not None:
                return reply
            self._count(error)
            if attempt < self.max_retries:
                self.tally.retries += 1
                await limits.pause(self._delay(attempt, retry_after))
        return give_up(self.tally, error, f"{error} after {self.max_retries + 1} attempts")

    async def _attempt(self, request: Request, check: Check | None) -> tuple[Reply | None, str, str | None]:
        """One request: (a final reply, "", None), or (None, the error kind, Retry-After) to retry."""
        import openai

        self.tally.requests += 1
        self.tally.in_flight += 1
        try:
            response = await self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": request.prompt}],
                temperature=self.temperature, max_tokens=self.max_new_tokens)
            text = response.choices[0].message.content
            if not isinstance(text, str):
                raise TypeError("reply without message content")
            usage = response.usage
            reply = Reply(text, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
            self.tally.prompt_tokens += reply.prompt_tokens
            self.tally.completion_tokens += reply.completion_tokens
            problem = check(text) if check else None
            return (None, problem, None) if problem else (reply, "", None)
        except openai.APIStatusError as e:
            error = f"http_{e.status_code}"
            if e.status_code not in (408, 409, 429) and e.status_code < 500:  # the request itself is wrong
                self._count(error)
                return give_up(self.tally, error, self.scrub(f"{error}: {e.message}"[:300])), error, None
            return None, error, e.response.headers.get("retry-after")
        except openai.APITimeoutError:
            return None, "timeout", None
        except openai.APIConnectionError:
            return None, "connection", None
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError):
            return None, "bad_response", None  # a 200 whose body is not a chat completion
        finally:
            self.tally.in_flight -= 1

    def _count(self, error: str) -> None:
        self.tally.errors[error] = self.tally.errors.get(error, 0) + 1


class TransformersGenerator:
    backend = "transformers"

    def __init__(self, model: str, max_new_tokens: int = 1024, temperature: float = 0.0,
                 context_tokens: int | None = None):
        from tenfold.models import load_tokenizer

        self.model, self.max_new_tokens, self.temperature = model, max_new_tokens, temperature
        if not load_tokenizer(model).chat_template:  # before the model's weights are loaded
            raise UserError(f"generator model {model} has no chat template; use an instruct model")
        self.llm = TransformersBackend(model, max_length=context_tokens, batch_size=1)
        self.context_tokens = self.llm.max_length
        self.lock = threading.Lock()  # one generate() at a time on the one model
        self.tally = Tally()

    def _generate(self, prompt: str) -> Reply:
        with self.lock:
            (new,) = self.llm.generate_ids([prompt], self.max_new_tokens, temperature=self.temperature)
        text = self.llm.tokenizer.decode(new, skip_special_tokens=True)
        return Reply(text, self.llm.prompt_length(prompt), len(new))

    async def complete(self, request: Request, check: Check | None = None) -> Reply:
        self.tally.requests += 1
        self.tally.in_flight += 1
        try:
            reply = await asyncio.to_thread(self._generate, request.prompt)
        finally:
            self.tally.in_flight -= 1
        self.tally.prompt_tokens += reply.prompt_tokens
        self.tally.completion_tokens += reply.completion_tokens
        return checked(reply, check, self.tally)


def make_generator(settings) -> OfflineGenerator | OpenAIGenerator | TransformersGenerator:
    """The backend `settings.generator` names, configured from the synth settings."""
    if settings.generator == "offline":
        return OfflineGenerator()
    if settings.generator == "openai":
        return OpenAIGenerator(
            settings.model or os.environ.get("OPENAI_MODEL") or "gpt-4-turbo", settings.base_url,
            settings.api_key_env, settings.concurrency, settings.max_retries, settings.request_timeout,
            settings.backoff_base, settings.backoff_max, settings.max_new_tokens, settings.temperature,
            settings.generator_context_tokens or 128_000, settings.requests_per_minute, settings.tokens_per_minute)
    if settings.generator == "transformers":
        if not settings.model:
            raise UserError("--generator transformers needs --model (a local path or hub id of an instruct model)")
        return TransformersGenerator(settings.model, settings.max_new_tokens, settings.temperature,
                                     settings.generator_context_tokens)
    raise RecipeError(f"unknown generator {settings.generator!r}; use offline, openai or transformers")
