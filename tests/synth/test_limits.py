"""synth's rate limits (requests and tokens per minute, as the paper's client has them) and the concurrency
that adapts to 429s (issue 14). Time is a fake clock: waiting advances it, nothing sleeps."""

import asyncio
import json

import pytest
from test_generators_openai import KEY_ENV, synth_argv
from test_synth import records_of, write_corpus

from fake_openai import FakeServer
from tenfold.cli import main
from tenfold.synth import limits
from tenfold.synth.limits import RequestLimiter


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    async def pause(self, seconds):
        self.t += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real wait would


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(limits, "now", fake.now)
    monkeypatch.setattr(limits, "pause", fake.pause)
    return fake


def admission_times(clock, limiter, costs):
    async def one(tokens):
        generation = await limiter.acquire(tokens)
        admitted = clock.t
        await limiter.release(generation, "ok")
        return admitted

    async def run():
        return await asyncio.gather(*(one(tokens) for tokens in costs))

    return asyncio.run(run())


def test_requests_per_minute_allow_a_full_minute_at_once_then_one_per_share_of_the_minute(clock):
    limiter = RequestLimiter(concurrency=16, requests_per_minute=2)
    assert admission_times(clock, limiter, [10] * 5) == [0, 0, 30, 60, 90]
    assert limiter.summary()["waited_s"] == 90


def test_tokens_per_minute_count_each_request_and_a_request_above_a_minute_waits_for_a_full_budget(clock):
    limiter = RequestLimiter(concurrency=16, tokens_per_minute=100)
    # 60 of 100 at once; the next 60 wait for 20 more (12 s); then 60 each (36 s)
    assert admission_times(clock, limiter, [60, 60, 60]) == pytest.approx([0, 12, 48])
    clock.t = 1000.0  # a long quiet spell refills the budget, to a full minute's and no more
    assert admission_times(clock, limiter, [250, 10]) == pytest.approx([1000, 1006])


def test_a_429_halves_the_concurrency_once_per_burst_and_successes_grow_it_back():
    async def yield_a_few_times():
        for _ in range(5):
            await asyncio.sleep(0)

    async def run():
        limiter = RequestLimiter(concurrency=8)
        first = [await limiter.acquire(1) for _ in range(8)]
        for generation in first[:3]:  # three 429s of requests sent under the same cap: one halving
            await limiter.release(generation, "rate_limited")
        assert (limiter.cap, limiter.in_flight) == (4, 5)
        waiting = asyncio.create_task(limiter.acquire(1))
        await yield_a_few_times()
        assert not waiting.done()  # 5 in flight under a cap of 4
        await limiter.release(first[3], "error")  # a 500 neither grows nor shrinks the cap
        await yield_a_few_times()
        assert not waiting.done() and limiter.cap == 4  # 4 in flight
        await limiter.release(first[4], "ok")
        second = await waiting  # a slot freed: admitted, under the new cap
        assert second == 1
        await limiter.release(second, "rate_limited")  # a 429 under the halved cap halves it again
        await limiter.release(first[5], "rate_limited")  # one sent under the old cap: no further halving
        assert limiter.cap == 2
        for generation in first[6:]:
            await limiter.release(generation, "ok")  # as many successes in a row as the cap: one more
        assert (limiter.cap, limiter.in_flight) == (3, 0)
        return limiter.summary()["concurrency"]

    assert asyncio.run(run()) == {"configured": 8, "lowest": 2, "final": 3, "shrinks_on_429": 2}


def synth_run(tmp_path, server, n_docs, *flags, **settings):
    corpus = write_corpus(tmp_path / "corpus", n_toy=n_docs, with_story=False, with_short=False)
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(json.dumps({"synth": {"api_key_env": KEY_ENV, "backoff_base": 0.01} | settings}))
    output = tmp_path / "synth.jsonl"
    try:
        main(synth_argv(corpus, output, server, "--tasks", "multi_detail", "--recipe", str(recipe), *flags))
    finally:
        server.close()
    return records_of(output), json.loads((tmp_path / "synth.jsonl.summary.json").read_text())


def test_requests_per_minute_by_flag_pace_a_synth_run(tmp_path, planted_key, clock):
    records, summary = synth_run(tmp_path, FakeServer(), 6, "--requests-per-minute", "4")
    assert len(records) == 6  # one request per record: 4 at once, then one every 15 s
    assert summary["limits"]["requests_per_minute"] == 4 and summary["limits"]["waited_s"] == 30
    assert clock.t == 30


def test_tokens_per_minute_from_the_recipe_pace_a_synth_run(tmp_path, planted_key, clock):
    # every prompt is longer than 50 tokens: each waits for a whole minute's budget, the first for none
    records, summary = synth_run(tmp_path, FakeServer(), 4, tokens_per_minute=50)
    assert len(records) == 4 and summary["limits"]["tokens_per_minute"] == 50
    assert summary["limits"]["waited_s"] == pytest.approx(180)


def test_concurrency_shrinks_on_429s_so_a_provider_that_allows_two_at_once_loses_nothing(tmp_path, planted_key):
    server = FakeServer(capacity=2, latency=0.05)  # a 429 for a third request in flight
    records, summary = synth_run(tmp_path, server, 12, "--concurrency", "8", max_retries=8)
    assert len({r["id"] for r in records}) == len(records) == 12 and summary["requests"]["failed"] == 0
    assert summary["limits"]["concurrency"]["lowest"] <= 2
    # a fixed 8 in flight meet a 429 on most attempts (six of eight each round) and spend their retries;
    # halving on 429s keeps them to about one per three successes once the cap is found
    assert server.over_capacity == summary["requests"]["errors"]["http_429"] < 24


def test_synth_reaches_its_first_request_without_importing_torch_or_transformers(tmp_path):
    """Start-up (issue 14): the target tokenizer counts through the tokenizers library, the generator is the
    openai client; torch and transformers (seconds of imports) wait for the end-of-run report."""
    import subprocess
    import sys

    code = ("import sys; from tenfold.cli import build_parser; from tenfold.synth.run import SynthSettings, "
            "token_counter; from tenfold.synth.generators import make_generator; "
            "build_parser(['synth']); settings = SynthSettings(corpus='c', output='o', generator='openai', "
            "base_url='http://127.0.0.1:9/v1', tokenizer='tenfold/tiny-llama'); "
            "count = token_counter(settings.tokenizer); make_generator(settings); "
            "print(count('the red fox opens two gates .'), sorted({'torch', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from tenfold.models import load_tokenizer

    expected = len(load_tokenizer("tenfold/tiny-llama")("the red fox opens two gates .",
                                                        add_special_tokens=False)["input_ids"])
    assert done.stdout.split() == [str(expected), "[]"]


def test_the_fast_token_count_is_transformers_count(tmp_path):
    from tenfold.models import load_tokenizer
    from tenfold.synth.run import token_counter
    from tenfold.toy import toy_records

    texts = [json.dumps(r) for r in toy_records(12, seed=4)] + ["  Ünïcödé ✓ 日本語\n\n x", "<|eot_id|> ok"]
    for name in ("tenfold/tiny-llama", "tenfold/toy-llama"):
        count, tokenizer = token_counter(name), load_tokenizer(name)
        assert [count(t) for t in texts] == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
