"""RULER's five sample generators (NVIDIA/RULER scripts/data/synthetic/{niah, variable_tracking,
common_words_extraction, freq_words_extraction, qa}.py), step for step, so that a task at a length gives
RULER's samples: the same random draws in the same order (one `random.Random(seed)` and one
`numpy.random.RandomState(seed)` per task and length, as each of RULER's generator processes seeds its
globals), the same binary search for the haystack size, the same per-sample retries.

A `Draw` is one such process. Its `template` is RULER's `--template`: the model template around the task
template, then the answer prefix; here the model template is the model's own chat template split at the
user's message (`open`, `close`), or nothing for a raw prompt (RULER's `base`). Token counts are RULER's:
the tokens of that whole text, special tokens spelled in it included, none added.
"""

from __future__ import annotations

import bisect
import random
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tenfold.errors import UserError

DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]  # niah.py
RETRIES = 1000  # draws at the smallest haystack before giving up (RULER never gives up)


@dataclass
class Sources:
    """What the tasks read: word lists (wonderwords), the essay (as RULER's whitespace-split words),
    SQuAD / HotpotQA (as RULER's read_squad / read_hotpotqa give them), the large word list (on demand)."""
    nouns: list[str] = field(default_factory=list)
    adjectives: list[str] = field(default_factory=list)
    verbs: list[str] = field(default_factory=list)
    essay: list[str] = field(default_factory=list)
    qa: dict = field(default_factory=dict)  # "squad" / "hotpotqa" -> (questions, documents)
    english_words: Callable[[], list[str]] | None = None
    sentences: Callable[[str], list[str]] | None = None  # nltk's sent_tokenize
    _pairs: Sequence | None = None

    def adjective_nouns(self) -> Sequence:
        if self._pairs is None:
            self._pairs = SortedPairs(self.adjectives, self.nouns)
        return self._pairs


class SortedPairs(Sequence):
    """`sorted(set(f"{a}-{n}" for a in adjectives for n in nouns))` (niah.py's key words) without building
    its six million strings (about 10 s and 800 MB). An adjective's pairs form one sorted run unless another
    adjective starts with it and a hyphen ("high", "high-pitched"): such adjectives share a group whose
    pairs are built and sorted; groups follow in the order of `adjective + "-"`."""

    def __init__(self, adjectives: list[str], nouns: list[str]):
        self.nouns = sorted(set(nouns))
        groups: list[list[str]] = []
        for adjective in sorted(set(adjectives), key=lambda a: a + "-"):
            if groups and (adjective + "-").startswith(groups[-1][0] + "-"):
                groups[-1].append(adjective)
            else:
                groups.append([adjective])
        self.groups: list[str | list[str]] = []  # "adjective-" (one run over the nouns) or the sorted pairs
        self.starts, total = [], 0
        for group in groups:
            items = group[0] + "-" if len(group) == 1 else sorted({f"{a}-{n}" for a in group for n in self.nouns})
            self.groups.append(items)
            self.starts.append(total)
            total += len(self.nouns) if len(group) == 1 else len(items)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < self.total:
            raise IndexError(i)
        g = bisect.bisect_right(self.starts, i) - 1
        items, offset = self.groups[g], i - self.starts[g]
        return items + self.nouns[offset] if isinstance(items, str) else items[offset]


@dataclass
class Draw:
    """One task at one length, as one of RULER's generator processes runs it."""
    args: dict  # the task's args in synthetic.yaml
    task_template: str
    answer_prefix: str
    tokens_to_generate: int
    length: int  # RULER's max_seq_length: prompt and generation
    seed: int
    count: Callable[[str], int]  # tokens of a text
    sources: Sources
    strings: dict  # needle, noise, document: the sentences RULER's generators format
    open: str = ""  # the model template before and after the user's message
    close: str = ""
    rng: random.Random = field(init=False)
    np_rng: np.random.RandomState = field(init=False)

    def __post_init__(self):
        self.rng, self.np_rng = random.Random(self.seed), np.random.RandomState(self.seed)

    def template(self, task_template: str | None = None, answer_prefix: str | None = None) -> str:
        """RULER's `--template`: model template around the task template, then the answer prefix."""
        def escape(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")
        return (escape(self.open) + (self.task_template if task_template is None else task_template)
                + escape(self.close) + (self.answer_prefix if answer_prefix is None else answer_prefix))

    def fits(self, text: str, extra: int = 0) -> bool:
        return self.count(text) + extra + self.tokens_to_generate <= self.length

    def sample(self, text: str, answers: list[str]) -> dict:
        """RULER's record: the input split where the answer prefix starts (its first 10 characters, last
        found), less the model template around it, which the backend adds again."""
        cut = text.rfind(self.answer_prefix[:10])
        prompt, prefix = text[:cut], text[cut:]
        if not prompt.startswith(self.open) or not prompt.endswith(self.close):
            raise UserError("ruler: the chat template does not frame the prompt as open + message + close; "
                            "pass chat=False (--no-chat)")
        return {"prompt": prompt[len(self.open):len(prompt) - len(self.close)], "answer_prefix": prefix,
                "answers": list(answers), "tokens": self.count(text) + self.tokens_to_generate}


def largest_fitting(fits: Callable[[int], bool], lower: int, upper: int) -> int | None:
    """RULER's binary search: the largest size in [lower, upper] that fits (every probe draws a sample)."""
    best = None
    while lower <= upper:
        middle = (lower + upper) // 2
        if fits(middle):
            best, lower = middle, middle + 1
        else:
            upper = middle - 1
    return best


def draw_fitting(make: Callable[[int], tuple[str, list[str]]], fits: Callable[[str], bool], size: int,
                 incremental: int, what: str) -> tuple[str, list[str]]:
    """RULER's per-sample loop: draw at `size`; while the draw does not fit (or fails), draw again,
    `incremental` smaller while the size is above `incremental`, else at the same size."""
    stuck = 0
    while True:
        try:
            text, answers = make(size)
            if fits(text):
                return text, answers
        except (IndexError, ValueError):  # RULER's bare `except:` retries a failed draw as well
            pass
        if size > incremental:
            size -= incremental
        else:
            stuck += 1
            if stuck > RETRIES:  # RULER would try forever
                raise UserError(f"ruler: {what} does not fit even with its smallest haystack; use longer --lengths")


def random_needle(kind: str, d: Draw) -> str:
    if kind == "numbers":
        return str(d.rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        return d.rng.choice(d.sources.adjective_nouns())
    if kind == "uuids":
        return str(uuid.UUID(int=d.rng.getrandbits(128), version=4))
    raise UserError(f"ruler: needle type {kind!r} is not one of numbers, words, uuids")


def essay_context(d: Draw, size: int, needles: list[str]) -> str:
    haystack = d.sources.essay
    if size <= len(haystack):
        text = " ".join(haystack[:size])
    else:
        text = " ".join((haystack * ((size + len(haystack) - 1) // len(haystack)))[:size])
    sentences = d.sources.sentences(text.strip())
    depths = d.rng.sample(DEPTHS, len(needles))
    positions = [0] + sorted(int(len(sentences) * (depth / 100)) for depth in depths) + [len(sentences)]
    parts = []
    for i in range(1, len(positions)):
        parts.append(" ".join(sentences[positions[i - 1]:positions[i]]))
        if i - 1 < len(needles):
            parts.append(needles[i - 1])
    return " ".join(parts)


def niah(d: Draw, samples: int) -> list[dict]:
    a = d.args
    kind, key_kind, value_kind = a["type_haystack"], a["type_needle_k"], a["type_needle_v"]
    n_keys, n_values, n_queries = max(a["num_needle_k"], a["num_needle_q"]), a["num_needle_v"], a["num_needle_q"]
    if kind not in ("essay", "noise", "needle"):
        raise UserError(f"ruler: haystack type {kind!r} is not one of essay, noise, needle")
    needle = d.strings["needle"]

    def make(size: int) -> tuple[str, list[str]]:
        keys, values, needles = [], [], []
        for _ in range(n_keys):
            keys.append(random_needle(key_kind, d))
            values.append([])
            for _ in range(n_values):
                values[-1].append(random_needle(value_kind, d))
                needles.append(needle.format(type_needle_v=value_kind, key=keys[-1], value=values[-1][-1]))
        random.Random(d.seed).shuffle(needles)
        if kind == "essay":
            context = essay_context(d, size, needles)
        else:
            lines = ([d.strings["noise"]] * size if kind == "noise" else
                     [needle.format(type_needle_v=value_kind, key=random_needle(key_kind, d),
                                    value=random_needle(value_kind, d)) for _ in range(size)])
            for index, line in zip(sorted(d.rng.sample(range(size), len(needles)), reverse=True), needles):
                lines.insert(index, line)
            context = "\n".join(lines)
        indices = d.rng.sample(range(n_keys), n_queries)
        queries = [keys[i] for i in indices]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, type_v = d.template(), value_kind
        if n_queries * n_values == 1:  # RULER's singular wording (on the task template and prefix only)
            def singular(text: str) -> str:
                return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers",
                                                                                                      "answer")
            template, type_v = d.template(singular(d.task_template), singular(d.answer_prefix)), value_kind[:-1]
        return (template.format(type_needle_v=type_v, context=context, query=query),
                [v for i in indices for v in values[i]])

    incremental = 500 if kind == "essay" else 5 if d.length < 4096 else 25
    return sized_samples(d, make, samples, incremental, "a niah sample")


def sized_samples(d: Draw, make, samples: int, incremental: int, what: str, make_sample=None) -> list[dict]:
    """niah.py's and qa.py's sizing: tokens per haystack item from one draw at `incremental`, an upper
    bound three times what that predicts, the binary search, then each sample (the same retries)."""
    text, _ = make(incremental)
    per_item = d.count(text) / incremental
    upper = max(int((d.length / per_item) * 3), incremental * 2)
    size = largest_fitting(lambda s: d.fits(make(s)[0]), incremental, upper) or incremental
    return [d.sample(*draw_fitting(make_sample(i) if make_sample else make, d.fits, size, incremental, what))
            for i in range(samples)]


def vt_chains(d: Draw, is_icl: bool) -> tuple[list[list[str]], list[list[str]]]:
    n_chains, hops = d.args.get("num_chains", 1), d.args.get("num_hops", 4)
    k, hops = (3, min(10, hops)) if is_icl else (5, hops)
    names = ["".join(d.rng.choices(string.ascii_uppercase, k=k)).upper() for _ in range((hops + 1) * n_chains)]
    while len(set(names)) < n_chains * (hops + 1):
        names.append("".join(d.rng.choices(string.ascii_uppercase, k=k)).upper())
    variables, chains = [], []
    for i in range(0, len(names), hops + 1):  # as RULER: a repeated name stays, an extra one makes a short chain
        chain_vars = names[i:i + hops + 1]
        variables.append(chain_vars)
        first = "12345" if is_icl else str(d.np_rng.randint(10000, 99999))
        chains.append([f"VAR {chain_vars[0]} = {first}"] +
                      [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} " for j in range(hops)])
    return variables, chains


def vt(d: Draw, samples: int) -> list[dict]:
    """variable_tracking.py: a one-shot example drawn first (3-letter names, value 12345, within 500 tokens of
    the bare template), then the samples, each with that example re-randomized in front of the task."""
    if d.args.get("type_haystack", "noise") != "noise":
        raise UserError("ruler: vt runs on the noise haystack only (synthetic.yaml's vt)")
    hops = d.args.get("num_hops", 4)
    bare = d.task_template + d.answer_prefix

    def make(size: int, is_icl: bool) -> tuple[str, list[str]]:
        variables, chains = vt_chains(d, is_icl)
        value = chains[0][0].split("=")[-1].strip()
        lines = [d.strings["noise"]] * size
        for chain in chains:
            positions = sorted(d.rng.sample(range(len(lines)), len(chain)))
            for j, position in enumerate(positions):
                lines.insert(position + j, chain[j])
        context = "\n".join(lines).replace(". \n", ".\n")
        return (bare if is_icl else d.template()).format(context=context, query=value, num_v=hops + 1), variables[0]

    def icl_fits(text: str) -> bool:
        return d.count(text) <= 500

    # the example: 500 tokens, no generation, sized on the bare template
    example_probe, _ = make(5, True)
    upper = max(int((500 / (d.count(example_probe) / 5)) * 3), 10)
    size = largest_fitting(lambda s: icl_fits(make(s, True)[0]), 5, upper) or 5
    text, answers = draw_fitting(lambda s: make(s, True), icl_fits, size, 5, "vt's example")
    example = text + " " + " ".join(answers) + "\n"
    example_tokens = d.count(example)

    def randomized(example: str) -> str:
        for name in example.strip().split()[-hops - 1:]:
            example = example.replace(name, "".join(d.rng.choices(string.ascii_uppercase, k=len(name))).upper())
        return example.replace("12345", str(d.np_rng.randint(10000, 99999)))

    def make_with_example(size: int) -> tuple[str, list[str]]:
        text, answers = make(size, False)
        cut = text.index(d.task_template[:20])
        return text[:cut] + randomized(example) + "\n" + text[cut:], answers

    incremental = 5 if d.length < 4096 else 10
    probe, _ = make(incremental, False)
    upper = max(int((d.length / (d.count(probe) / incremental)) * 3), incremental * 2)
    size = largest_fitting(lambda s: d.fits(make(s, False)[0], example_tokens), incremental, upper) or incremental
    return [d.sample(*draw_fitting(make_with_example, d.fits, size, incremental, "a vt sample"))
            for _ in range(samples)]


def cwe(d: Draw, samples: int) -> list[dict]:
    """common_words_extraction.py: one example list (40 words; 20 below 4K) before the task's list."""
    a = d.args
    freq_common, freq_rare, n_common = a.get("freq_cw", 30), a.get("freq_ucw", 3), a.get("num_cw", 10)
    shots = a.get("num_fewshot", 1)
    words = sorted(set(d.sources.nouns + d.sources.adjectives + d.sources.verbs))
    random.Random(d.seed).shuffle(words)

    def example(n_words: int, common_repeats: int, rare_repeats: int) -> tuple[str, list[str]]:
        pool = words if n_words <= len(words) else d.sources.english_words()
        chosen = d.rng.sample(pool, n_words)
        common, rare = chosen[:n_common], chosen[n_common:]
        listed = common * int(common_repeats) + rare * int(rare_repeats)
        random.Random(d.seed).shuffle(listed)
        return " ".join(f"{i + 1}. {word}" for i, word in enumerate(listed)), common

    def make(n_words: int) -> tuple[str, list[str]]:
        if d.length < 4096:
            examples = [example(20, 3, 1) for _ in range(shots)]
            context, answers = example(n_words, 6, 1)
        else:
            examples = [example(40, 10, 3) for _ in range(shots)]
            context, answers = example(n_words, freq_common, freq_rare)
        template = d.template()
        shown = [template.format(num_cw=n_common, context=c, query="") + " " +
                 " ".join(f"{i + 1}. {word}" for i, word in enumerate(answer)) for c, answer in examples]
        return "\n".join(shown) + "\n" + template.format(num_cw=n_common, context=context, query=""), answers

    probe, _ = make(4096)
    upper = max(int(d.length // (d.count(probe) / 4096)) * 2, 20)
    size = largest_fitting(lambda s: d.fits(make(s)[0]), 10, upper) or 10
    return [d.sample(*draw_fitting(make, d.fits, size, 10, "a cwe sample")) for _ in range(samples)]


def fwe(d: Draw, samples: int) -> list[dict]:
    """freq_words_extraction.py: coded words drawn from a zeta distribution; the answer is ranks 1-3."""
    from scipy.special import zeta

    a = d.args
    alpha, word_length = float(a.get("alpha", 2.0)), a.get("coded_wordlen", 6)
    max_length = d.length - d.tokens_to_generate
    vocab_size = max_length // 50 if a.get("vocab_size", -1) == -1 else a["vocab_size"]
    incremental = max_length // 32

    def make(n_words: int = -1) -> tuple[str, list[str], int]:
        vocab = ["".join(d.rng.choices(string.ascii_lowercase, k=word_length)) for _ in range(vocab_size)]
        while len(set(vocab)) < vocab_size:
            vocab.append("".join(d.rng.choices(string.ascii_lowercase, k=word_length)))
        vocab = sorted(set(vocab))
        random.Random(d.seed).shuffle(vocab)
        vocab[0] = "..."  # the most frequent "word" is noise

        def text(n: int) -> tuple[str, list[str]]:
            k = np.arange(1, len(vocab) + 1)
            counts = n * (k ** -alpha) / zeta(alpha)
            coded = [w for w, c in zip(vocab, counts.astype(int)) for _ in range(c)]
            random.Random(d.seed).shuffle(coded)
            return d.template().format(context=" ".join(coded), query=""), vocab[1:4]

        if n_words > 0:
            body, answers = text(n_words)
            while d.count(body) > max_length:
                n_words -= incremental
                body, answers = text(n_words)
        else:
            n_words = max_length // word_length
            body, answers = text(n_words)
            while d.count(body) < max_length:
                n_words += incremental
                body, answers = text(n_words)
            n_words -= incremental
        body, answers = text(n_words)
        return body, answers, n_words

    if incremental <= 0:
        raise UserError(f"ruler: fwe needs lengths of at least {d.tokens_to_generate + 32} tokens")
    n_words = make()[2]
    return [d.sample(*make(n_words)[:2]) for _ in range(samples)]


def qa(d: Draw, samples: int) -> list[dict]:
    """qa.py: the question's gold documents (and, for SQuAD, the rest of its article) among distractors."""
    questions, documents = d.sources.qa[d.args["dataset"]]
    if samples > len(questions):
        raise UserError(f"ruler: {d.args['dataset']} has {len(questions)} questions; use --samples "
                        f"{len(questions)} or fewer")
    document = d.strings["document"]

    def make(index: int, size: int) -> tuple[str, list[str]]:
        q = questions[index]
        gold, more = q["context"], q.get("more_context", [])
        if size < len(documents):
            if size - len(gold) > len(more):
                others = [i for i, _ in enumerate(documents) if i not in gold + more]
                chosen = gold + more + d.rng.sample(others, max(0, size - len(gold) - len(more)))
            else:
                chosen = gold + d.rng.sample(more, size - len(gold))
            shown = [documents[i] for i in chosen]
        else:
            shown = (documents * ((size + len(documents) - 1) // len(documents)))[:size]
        random.Random(d.seed).shuffle(shown)
        context = "\n\n".join(document.format(i=i + 1, document=doc) for i, doc in enumerate(shown))
        return d.template().format(context=context, query=q["query"]), q["outputs"]

    return sized_samples(d, lambda size: make(0, size), samples, 10, "a qa sample",
                         make_sample=lambda i: (lambda size: make(i, size)))


def read_squad(data: dict) -> tuple[list[dict], list[str]]:
    """qa.py's read_squad of SQuAD v2 dev (dev-v2.0.json's layout): answerable questions only."""
    documents = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(documents)}
    questions = []
    for article in data["data"]:
        article_docs = [index[p["context"]] for p in article["paragraphs"]]
        for paragraph in article["paragraphs"]:
            for q in paragraph["qas"]:
                if not q["is_impossible"]:
                    questions.append({"query": q["question"], "outputs": [a["text"] for a in q["answers"]],
                                      "context": [index[paragraph["context"]]],
                                      "more_context": [i for i in article_docs if i != index[paragraph["context"]]]})
    return questions, documents


def read_hotpotqa(data: list[dict]) -> tuple[list[dict], list[str]]:
    """qa.py's read_hotpotqa of HotpotQA dev distractor (hotpot_dev_distractor_v1.json's layout)."""
    documents = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(documents)}
    questions = [{"query": d["question"], "outputs": [d["answer"]],
                  "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    return questions, documents


GENERATORS = {"niah": niah, "variable_tracking": vt, "common_words_extraction": cwe,
              "freq_words_extraction": fwe, "qa": qa}
