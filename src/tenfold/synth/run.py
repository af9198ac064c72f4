"""`tenfold synth`: long documents in, long multi-turn QA conversations out (the paper's training data).

    corpus -> filter (length in target-model tokens, language, duplicates) -> one task per document
           -> generator requests (cached on disk) -> validated replies -> conversation records

Records are appended to the output as they finish, one write per line. The output itself is the
record of what is done: a restarted run skips the contexts whose ids it holds (after dropping a last
line cut off by a kill), and the response cache, keyed by (backend, model, prompt), makes redoing the
rest free. So a run killed at any moment and started again ends with every record exactly once.
Only usable replies are cached, and a context whose request failed for good gets no record, so a rerun
asks again for exactly what is missing.
At the end: OUTPUT.summary.json (counts, rejections by reason, tokens, cost) and OUTPUT.lengths.png.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from tenfold.synth.cluster import DEFAULT_EMBEDDING_MODEL, heterogeneous_groups
from tenfold.synth.corpus import Document, filter_documents, read_corpus, text_id
from tenfold.synth.generators import Reply, Request, make_generator
from tenfold.synth.prompts import PROMPTS, TASKS
from tenfold.synth.replies import reply_problem, valid_items
from tenfold.synth.tasks import Context, conversation_record, context_id, document_context, heterogeneous_context
from tenfold.io import AppendLog, write_atomic, warn
from tenfold.models import load_tokenizer, plain_tokenizer_file, target_tokenizer
from tenfold.recipe import RecipeError, coerce, read_recipe_file
from tenfold.toy import TOY_DATA, toy_records

HOMOGENEOUS = ("single_detail", "multi_detail", "biography")
@dataclass
class SynthSettings:
    corpus: str = ""
    output: str = ""
    generator: Literal["offline", "openai", "transformers"] = "offline"
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    tokenizer: str = ""  # the target model's: lengths are counted in its tokens (see target_tokenizer)
    min_tokens: int = 64_000  # the paper's 64K-80K documents
    max_tokens: int = 80_000
    chunk_tokens: int = 4096
    language: str | None = None  # e.g. "en" (langdetect); None keeps every language
    text_field: str = "text"
    max_contexts: int | None = None  # stop after this many contexts (records already in the output count)
    questions_per_chunk: int = 4
    single_detail_chunks: int = 3
    multi_detail_questions: int = 10
    multi_detail_excerpts: int = 4
    biography_characters: int = 5
    heterogeneous_clusters: int | None = None  # None: about one cluster per context's worth of tokens
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    model: str = ""  # the generator's model (openai: default $OPENAI_MODEL, else gpt-4-turbo)
    base_url: str | None = None  # openai: default $OPENAI_BASE_URL, else OpenAI's
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key; keys never go in recipes
    # Requests in flight at most (openai): halved on a 429, grown back by one per as many successes in a row.
    concurrency: int = 32
    # The provider's published limits (None: none). The paper's client ran at 5000 requests and 100K tokens a
    # minute; a request counts its prompt (about 4 characters a token) plus max_new_tokens.
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 6
    request_timeout: float = 600.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_new_tokens: int = 4096
    temperature: float = 0.0
    generator_context_tokens: int | None = None  # what the generator reads; None: the backend's own
    price_input_per_million: float = 0.0  # for the cost tally, in your currency
    price_output_per_million: float = 0.0
    cache_dir: str | None = None  # default: OUTPUT.cache/
    seed: int = 0


def synth_settings(recipe: str | None = None, overrides: dict | None = None) -> SynthSettings:
    """Defaults, then the recipe's `synth:` section, then the overrides; every value checked."""
    settings, hints = SynthSettings(), typing.get_type_hints(SynthSettings)
    section = (read_recipe_file(recipe).get("synth") or {}) if recipe else {}
    if not isinstance(section, dict):
        raise RecipeError(f"{recipe}: 'synth' must be a mapping of synth keys")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in (section | flags).items():
        where = "command line" if key in flags else recipe
        if key not in hints:
            raise RecipeError(f"{where}: unknown synth key {key!r}; allowed: {', '.join(hints)}")
        try:
            setattr(settings, key, coerce(value, hints[key], f"synth.{key}"))
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None
    unknown = set(settings.tasks) - set(TASKS)
    if unknown:
        raise RecipeError(f"unknown task(s) {', '.join(sorted(unknown))}; use {', '.join(TASKS)}")
    if not settings.corpus or not settings.output:
        raise RecipeError("synth needs a corpus and an output file")
    if settings.concurrency < 1:
        raise RecipeError(f"synth.concurrency is {settings.concurrency}; give 1 or more requests in flight")
    for key in ("requests_per_minute", "tokens_per_minute"):
        if getattr(settings, key) is not None and getattr(settings, key) <= 0:
            raise RecipeError(f"synth.{key} is {getattr(settings, key)}; give a positive limit or leave it unset")
    if settings.min_tokens > settings.max_tokens:
        raise RecipeError(f"min_tokens ({settings.min_tokens}) is above max_tokens ({settings.max_tokens})")
    settings.tokenizer = settings.tokenizer or target_tokenizer("synth", recipe, [settings.corpus])
    return settings


class ResponseCache:
    """One JSON file per reply, named by the hash of (backend, model, prompt); written atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, backend: str, model: str, prompt: str) -> Path:
        key = hashlib.sha256(json.dumps([backend, model, prompt]).encode()).hexdigest()
        return self.directory / key[:2] / f"{key}.json"

    def get(self, backend: str, model: str, prompt: str) -> Reply | None:
        path = self._path(backend, model, prompt)
        try:
            return Reply(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def put(self, backend: str, model: str, prompt: str, reply: Reply) -> None:
        path = self._path(backend, model, prompt)
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, json.dumps(dataclasses.asdict(reply)), "--cache-dir")


def toy_documents():
    """`--corpus tenfold/toy`: the toy world's documents with facts in them (its conversations' documents)."""
    for record in toy_records(24, seed=0, min_lines=60, max_lines=80):
        if "conversations" in record:
            text = record["conversations"][0]["content"].rsplit("\n\n", 1)[0]  # without the question
            yield Document(text_id(text), text, "toy", record["id"])


def contexts(settings: SynthSettings, generator, count_tokens, skipped: Counter):
    """Every context of the run, in a fixed order: documents round-robin over the homogeneous tasks,
    then the heterogeneous groups of the shorter texts."""
    homogeneous = [t for t in settings.tasks if t in HOMOGENEOUS]
    short_texts = []
    keep_short = short_texts.append if "multi_detail_heterogeneous" in settings.tasks else None
    if settings.corpus == TOY_DATA:
        documents = toy_documents()
    else:
        documents = read_corpus(settings.corpus, skipped, settings.text_field)
    kept = filter_documents(documents, count_tokens, settings.min_tokens, settings.max_tokens, skipped,
                            settings.language, (lambda d, n: keep_short((d, n))) if keep_short else None)
    for index, (document, n_tokens) in enumerate(kept):
        if homogeneous:
            task = homogeneous[index % len(homogeneous)]
            yield context_id(task, document.id), lambda t=task, d=document, n=n_tokens: document_context(
                t, d, n, count_tokens, settings, generator)
        else:
            skipped["no_homogeneous_task"] += 1
    if keep_short:
        for group in heterogeneous_groups(short_texts, settings.min_tokens, settings.max_tokens, skipped,
                                          settings.heterogeneous_clusters, settings.seed, settings.embedding_model):
            context = heterogeneous_context(group, settings)
            yield context.id, lambda c=context: c


def token_counter(name: str):
    """count(text): the text's length in the target model's tokens. On a plain tokenizer.json, the `tokenizers`
    library runs it directly (what transformers' fast tokenizer runs, so the same counts) and synth sends its
    first request without the seconds that importing transformers and torch take; else transformers'."""
    path = plain_tokenizer_file(name)
    if path is None:
        tokenizer = load_tokenizer(name)
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(path))
    return lambda text: len(backend.encode(text, add_special_tokens=False).ids)


async def run_contexts(todo, done: set[str], process, output: AppendLog, settings: SynthSettings,
                       stats: Counter) -> None:
    """process(context, fd) for each (id, build) of `todo` not in `done`, at most 2 x concurrency contexts in
    flight (the generator bounds the requests); the first failure cancels the rest and is raised."""
    fd = os.open(output.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pending: set[asyncio.Task] = set()
    started = len(done)
    try:
        for cid, build in todo:
            if cid in done:
                stats["already_done"] += 1
                continue
            if settings.max_contexts is not None and started >= settings.max_contexts:
                break
            started += 1
            while len(pending) >= 2 * settings.concurrency:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = [task.exception() for task in finished if task.exception()]  # each one retrieved
                if failed:
                    raise failed[0]
            pending.add(asyncio.create_task(process(build(), fd)))
            await asyncio.sleep(0)  # let requests start while the next document is read
        for task in asyncio.as_completed(pending):
            await task
    except BaseException:  # a failed write, Ctrl-C: stop the rest quietly, then report the first cause
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    finally:
        os.close(fd)


def synth(settings: SynthSettings) -> dict:
    """Run the synthesis; returns (and writes) the summary."""
    output = Path(settings.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    count_tokens = token_counter(settings.tokenizer)
    log = AppendLog(output, "--output", "use a new --output file")
    done = set(log.finished(keep_records=False))
    generator = make_generator(settings)
    cache = ResponseCache(settings.cache_dir or f"{output}.cache")
    skipped, rejected = Counter(), Counter()
    stats = Counter()
    records_by_task = Counter()
    progress = tqdm(desc="synth", unit="context", dynamic_ncols=True)

    async def ask(request: Request) -> Reply:
        reply = cache.get(generator.backend, generator.model, request.prompt)
        # an unusable reply cached by an older version is asked again, never replayed
        if reply is not None and reply.text is not None and reply_problem(reply.text) is None:
            stats["cached_replies"] += 1
            return reply
        reply = await generator.complete(request, reply_problem)
        if reply.text is not None:  # failures are not cached: a rerun asks again
            cache.put(generator.backend, generator.model, request.prompt, reply)
        return reply

    async def process(context: Context, fd: int) -> None:
        replies = await asyncio.gather(*(ask(r) for r in context.requests))
        failed = [reply.error for reply in replies if reply.text is None]
        if failed:  # a written record is final, so the context waits for a rerun to ask again
            rejected["request_failed"] += len(failed)
            warn(f"synth: {context.id}: {len(failed)} request(s) failed for good ({failed[0]}); "
                 f"no record yet: run the same command again to ask again")
        else:
            items = []
            for reply, support in zip(replies, context.supports):
                items += valid_items(reply.text, PROMPTS[context.task].keys, rejected, support)
            record = conversation_record(context, items, generator)
            if record is None:
                stats["contexts_without_record"] += 1
            else:
                log.append_to(fd, record)
                records_by_task[context.task] += 1
        progress.update(1)
        progress.set_postfix(in_flight=generator.tally.in_flight, records=sum(records_by_task.values()),
                             tokens=generator.tally.prompt_tokens + generator.tally.completion_tokens,
                             rejects=sum(rejected.values()), refresh=False)

    try:
        asyncio.run(run_contexts(contexts(settings, generator, count_tokens, skipped), done, process,
                                 log, settings, stats))
    finally:
        progress.close()  # the bar ends its line before any error is printed
    from tenfold.synth.report import write_report

    tokenizer = load_tokenizer(settings.tokenizer)  # with its chat template: record lengths as training sees them
    return write_report(output, settings, generator, tokenizer, skipped, rejected, stats, records_by_task)
