"""How fast synth may ask an API: requests and tokens per minute, and a concurrency that adapts to 429s.

The per-minute limits are the paper's own client's (its data_pipeline/_openai.py, OpenAI's parallel request
processor): two budgets that start full and refill continuously at the limit's rate, a request spending one
request and its tokens (prompt + max_tokens, counted as the provider counts them before it answers).
Concurrency is additive-increase / multiplicative-decrease: a 429 halves the requests allowed in flight
(once per burst: the 429s of requests sent under the same cap count as one), and as many successes in a
row as the cap allows raise it by one, back up to the configured concurrency. So synth can be given a
provider's published limits and its concurrency as is, and finds the rate the provider actually grants.

Written here rather than taken from aiolimiter (a leaky bucket of one rate): two budgets, a request larger
than a whole minute's token budget (it waits for a full budget instead of failing), the adaptive cap, and a
clock the tests can replace (`now` and `pause`, module functions so a test can patch them).
"""

from __future__ import annotations

import asyncio
import math
import time

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English; the generator's own tokenizer is not at hand


def now() -> float:
    return time.monotonic()


async def pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


def estimated_tokens(prompt: str, max_new_tokens: int) -> int:
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + max_new_tokens


class RequestLimiter:
    def __init__(self, concurrency: int, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None):
        self.max_concurrency = self.cap = self.lowest_cap = concurrency
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.requests_left, self.tokens_left = requests_per_minute or 0.0, tokens_per_minute or 0.0
        self.updated = now()
        self.in_flight = self.successes = self.generation = self.shrinks = 0
        self.waited = 0.0  # seconds spent waiting for a per-minute budget
        self.admission = asyncio.Lock()  # requests are admitted one at a time, in arrival order
        self.slot_free = asyncio.Condition()

    async def acquire(self, tokens: int) -> int:
        """Wait for a free slot under the cap and for the budgets; returns the cap's generation."""
        async with self.admission:
            async with self.slot_free:
                await self.slot_free.wait_for(lambda: self.in_flight < self.cap)
                self.in_flight += 1
            await self._spend(tokens)
            return self.generation

    async def release(self, generation: int, outcome: str) -> None:
        """outcome: "ok", "rate_limited" (a 429) or "error" (neither grows nor shrinks the cap)."""
        async with self.slot_free:
            self.in_flight -= 1
            if outcome == "rate_limited":
                self.successes = 0
                if generation == self.generation:
                    self.cap = max(1, self.cap // 2)
                    self.lowest_cap = min(self.lowest_cap, self.cap)
                    self.generation += 1
                    self.shrinks += 1
            elif outcome == "ok":
                self.successes += 1
                if self.successes >= self.cap and self.cap < self.max_concurrency:
                    self.cap, self.successes = self.cap + 1, 0
            self.slot_free.notify_all()

    async def _spend(self, tokens: int) -> None:
        if self.tpm:
            tokens = min(tokens, self.tpm)  # larger than a minute's budget: it waits for a full one
        while True:
            self._refill()
            wait = max((1 - self.requests_left) * 60 / self.rpm if self.rpm else 0.0,
                       (tokens - self.tokens_left) * 60 / self.tpm if self.tpm else 0.0)
            if wait <= 1e-9:
                break
            self.waited += wait
            await pause(wait)
        self.requests_left -= 1
        self.tokens_left -= tokens

    def _refill(self) -> None:
        moment = now()
        elapsed, self.updated = moment - self.updated, moment
        if self.rpm:
            self.requests_left = min(self.rpm, self.requests_left + elapsed * self.rpm / 60)
        if self.tpm:
            self.tokens_left = min(self.tpm, self.tokens_left + elapsed * self.tpm / 60)

    def summary(self) -> dict:
        return {"requests_per_minute": self.rpm, "tokens_per_minute": self.tpm, "waited_s": round(self.waited, 3),
                "concurrency": {"configured": self.max_concurrency, "lowest": self.lowest_cap, "final": self.cap,
                                "shrinks_on_429": self.shrinks}}
