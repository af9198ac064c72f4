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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from tenfold.config import setting
from tenfold.errors import RecipeError
from tenfold.io import AppendLog, warn, write_atomic, write_error
from tenfold.models import load_tokenizer, plain_tokenizer_file, target_tokenizer
from tenfold.synth.cluster import DEFAULT_EMBEDDING_MODEL, heterogeneous_groups
from tenfold.synth.corpus import Document, filter_documents, read_corpus, text_id
from tenfold.synth.generators import Reply, Request, make_generator
from tenfold.synth.prompts import PROMPTS, TASKS
from tenfold.synth.replies import reply_problem, valid_items
from tenfold.synth.tasks import Context, context_id, conversation_record, document_context, heterogeneous_context
from tenfold.toy import TOY_DATA, toy_records

HOMOGENEOUS = ("single_detail", "multi_detail", "biography")


@dataclass
class SynthSettings:
    """`tenfold synth`: each field is a flag, and a key of a recipe's synth: section."""
    corpus: str = setting(help="folder of .txt/.md, .jsonl, .parquet, saved dataset, hub id, or tenfold/toy")
    output: str = setting(help="JSONL of conversation records (appended; a rerun resumes)")
    generator: Literal["offline", "openai", "transformers"] = setting("offline", "what writes the questions and "
                                                                                "answers")
    tasks: list[str] = setting(list(TASKS), "comma-separated (default: all: " + ",".join(TASKS) + ")")
    tokenizer: str = setting("", "the target model's tokenizer: lengths are counted in its tokens (default: the "
                                 "--recipe's model.name; needed otherwise, except on --corpus tenfold/toy)")
    min_tokens: int = setting(64_000, "shortest document, in target tokens; the paper's are 64K-80K")
    max_tokens: int = setting(80_000, "longest document, in target tokens")
    recipe: str | None = setting(None, "YAML file whose synth: section sets any synth key (its model.name: the "
                                       "tokenizer)")
    model: str = setting("", "the generator's model (openai: default $OPENAI_MODEL, else gpt-4-turbo; "
                             "transformers: needed)")
    base_url: str | None = setting(None, "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI's); "
                                         "key from $OPENAI_API_KEY")
    # Halved on a 429, grown back by one per as many successes in a row.
    concurrency: int = setting(32, "requests in flight at most (openai; halved on a 429 and grown back on "
                                   "successes)")
    # The paper's client ran at 5000 requests and 100K tokens a minute.
    requests_per_minute: float | None = setting(None, "the provider's request limit (openai; default: none)")
    tokens_per_minute: float | None = setting(None, "the provider's token limit, a request's prompt (about 4 "
                                                    "characters a token) + max_new_tokens (openai; default: none)")
    request_timeout: float = setting(600.0, "seconds before a request is given up and retried (openai)")
    max_contexts: int | None = setting(None, "stop after this many records' contexts (records already in the "
                                             "output count)")
    chunk_tokens: int = setting(4096, "chunk size in target tokens")
    language: str | None = setting(None, "keep only documents in this language (langdetect code, e.g. en; "
                                         "default: every language)")
    text_field: str = setting("text", "the text field of JSONL/Parquet/dataset rows")
    cache_dir: str | None = setting(None, "response cache (default: OUTPUT.cache/)")
    questions_per_chunk: int = setting(4, "questions asked per chunk")
    single_detail_chunks: int = setting(3, "chunks of a document a single_detail conversation asks about")
    multi_detail_questions: int = setting(10, "questions per multi_detail conversation")
    multi_detail_excerpts: int = setting(4, "excerpts a multi_detail question is asked over")
    biography_characters: int = setting(5, "characters per biography conversation")
    heterogeneous_clusters: int | None = setting(None, "clusters of short texts (default: about one per "
                                                       "context's worth of tokens)")
    embedding_model: str = setting(DEFAULT_EMBEDDING_MODEL, "embeds the short texts for clustering")
    api_key_env: str = setting("OPENAI_API_KEY", "the variable holding the API key (keys never go in recipes)")
    max_retries: int = setting(6, "retries of a failed request")
    backoff_base: float = setting(1.0, "seconds of the first retry's back-off (jittered), doubled each retry")
    backoff_max: float = setting(60.0, "longest back-off, in seconds")
    max_new_tokens: int = setting(4096, "tokens a reply may have")
    temperature: float = setting(0.0, "the generator's sampling temperature")
    generator_context_tokens: int | None = setting(None, "what the generator reads (default: the backend's own)")
    price_input_per_million: float = setting(0.0, "for the cost tally, in your currency")
    price_output_per_million: float = setting(0.0, "for the cost tally, in your currency")
    seed: int = setting(0, "seed of the short texts' clustering (multi_detail_heterogeneous)")

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise RecipeError(f"unknown task(s) {', '.join(sorted(unknown))}; use {', '.join(TASKS)}")
        if not self.corpus or not self.output:
            raise RecipeError("synth needs a corpus and an output file")
        if self.concurrency < 1:
            raise RecipeError(f"synth.concurrency is {self.concurrency}; give 1 or more requests in flight")
        for key in ("requests_per_minute", "tokens_per_minute"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise RecipeError(f"synth.{key} is {getattr(self, key)}; give a positive limit or leave it unset")
        if self.min_tokens > self.max_tokens:
            raise RecipeError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        self.tokenizer = self.tokenizer or target_tokenizer("synth", self.recipe, [self.corpus])


class ResponseCache:
    """One JSON file per reply, named by the hash of (backend, model, prompt); written atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.directory, e, "--cache-dir") from None

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
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as e:
            raise write_error(path, e, "--cache-dir") from None
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
    fd = output.open()
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
    try:  # before a generator loads its model: an output folder that cannot be made is told at once
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(output, e, "--output") from None
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
