"""The toy world: diaries with facts in them, the records and needle prompts made of them, and the tiny
Llama-architecture model with its byte-level BPE tokenizer that the tests, the tiny recipe and the demo use.

A diary is lines like "day 37 : the red fox paints two gold doors .": the day rises by one a line and the
plural agrees with the count, so the next word depends on what came before and on position. A fact is
"the number of anna is 42 ." -- the sentence shape that `tenfold synth`'s offline generator turns into
"what is the number of anna ?" / "42". A conversation record is the pipeline's own format (DESIGN.md): the
document and the first question in the first user turn, one more user/assistant turn per further question.
The day numbers are the needle test's distractors: the answer is one two-digit number among hundreds.
Everything is drawn from a seeded random generator, so the same seed gives the same records.

`toy_records` is the shipped data `tenfold/toy` (tiny recipe, `--corpus tenfold/toy`, the tiny tokenizer's
texts); `question_record`, `plain_record`, `needle_case` and `synth_corpus` are the demo's. The tiny model
(`tenfold/tiny-llama`, random weights from a fixed seed) is rebuilt with
`python -m tenfold.toy src/tenfold/assets/tiny-llama`; `build_model` is the one place a tiny Llama is built.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

TOY_DATA = "tenfold/toy"  # the shipped toy world, as a corpus or data file name for synth, mix and train

COLOURS = ["red", "blue", "green", "gold", "grey", "white", "black", "brown"]
ANIMALS = ["fox", "owl", "cat", "dog", "hen", "bee", "elk", "yak"]
VERBS = ["paints", "finds", "moves", "opens", "counts", "carries", "mends", "hides"]
OBJECTS = ["door", "gate", "box", "lamp", "bell", "boat", "cup", "key"]
NUMBERS = ["one", "two", "three", "four", "five", "six"]
NAMES = ["anna", "boris", "clara", "david", "elena", "felix", "greta", "hugo", "iris", "jonas"]
LINE_TOKENS = 12  # tokens of one diary line with its newline, in the demo's tokenizer (checked by the tests)


# ---- documents and facts ----

def diary_line(day: int, rng: random.Random) -> str:
    count = rng.randrange(len(NUMBERS))
    obj = rng.choice(OBJECTS) + ("s" if count > 0 else "")
    return (f"day {day % 100} : the {rng.choice(COLOURS)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} "
            f"{NUMBERS[count]} {rng.choice(COLOURS)} {obj} .")


def document(n_lines: int, rng: random.Random) -> list[str]:
    start = rng.randrange(100)
    return [diary_line(start + i, rng) for i in range(n_lines)]


def fact_sentence(name: str, value: int) -> str:
    return f"the number of {name} is {value} ."


def question(name: str) -> str:
    return f"what is the number of {name} ?"


def draw_facts(n_facts: int, rng: random.Random) -> dict[str, int]:
    return {name: rng.randrange(10, 100) for name in rng.sample(NAMES, n_facts)}


def place_facts(lines: list[str], facts: dict[str, int], rng: random.Random, edge_prob: float = 0.0,
                depths: list[float] | None = None) -> list[str]:
    """The lines with each fact inserted between two of them: at the given depths (0..1), else at
    random, with probability `edge_prob` at the very start (where attention at depth 0 is weakest)."""
    lines = list(lines)
    for k, (name, value) in enumerate(facts.items()):
        if depths is not None:
            at = round(depths[k] * len(lines))
        elif rng.random() < edge_prob:
            at = rng.randrange(min(2, len(lines) + 1))
        else:
            at = rng.randrange(len(lines) + 1)
        lines.insert(at, fact_sentence(name, value))
    return lines


# ---- records ----

def conversation(lines: list[str], facts: dict[str, int], asked: list[str], record_id: str, task: str) -> dict:
    """The conversation record about a document: the `asked` facts' questions, one a turn, answered."""
    turns = []
    for i, name in enumerate(asked):
        content = "\n".join(lines) + "\n\n" + question(name) if i == 0 else question(name)
        turns.append({"role": "user", "content": content})
        turns.append({"role": "assistant", "content": str(facts[name])})
    return {"id": record_id, "source": "toy", "task": task, "conversations": turns, "meta": {"facts": facts}}


def question_record(n_lines: int, n_facts: int, n_questions: int, rng: random.Random, edge_prob: float = 0.0,
                    record_id: str = "toy-q") -> dict:
    """A conversation about a document with n_facts facts; n_questions of them asked, in random order."""
    facts = draw_facts(n_facts, rng)
    lines = place_facts(document(n_lines, rng), facts, rng, edge_prob)
    return conversation(lines, facts, rng.sample(list(facts), min(n_questions, n_facts)), record_id, "toy_qa")


def plain_record(n_lines: int, rng: random.Random, n_facts: int = 0, record_id: str = "toy-doc") -> dict:
    facts = draw_facts(n_facts, rng)
    return {"id": record_id, "source": "toy", "text": "\n".join(place_facts(document(n_lines, rng), facts, rng))}


def toy_records(n: int, seed: int = 0, min_lines: int = 8, max_lines: int = 64, max_facts: int = 3) -> list[dict]:
    """n records, alternating long conversations (every fact asked, in turn) and plain documents."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        n_lines = rng.randint(min_lines, max_lines)
        if i % 2:
            records.append(plain_record(n_lines, rng, record_id=f"toy-plain-{i}"))
            continue
        # tenfold/toy's own draw order, older than question_record's (document first, facts placed uniformly
        # with no edge draw): kept so that the shipped data stays what it was for every seed.
        n_facts = rng.randint(1, max_facts)
        lines = document(n_lines, rng)
        facts = draw_facts(n_facts, rng)
        for name, value in facts.items():
            lines.insert(rng.randrange(len(lines) + 1), fact_sentence(name, value))
        records.append(conversation(lines, facts, list(facts), f"toy-chat-{i}", "multi_detail_qa"))
    return records


# ---- needle prompts and the demo's corpus ----

def prompt_tokens(tokenizer, prompt: str) -> int:
    """Tokens the model reads for a one-turn prompt, chat template and generation header included."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def needle_case(tokenizer, length: int, depth: float, rng: random.Random, case_id: str) -> dict:
    """One needle prompt: a diary with one fact at `depth` percent, then its question, in at most `length`
    tokens with the chat template; the answer is the fact's number (scored by exact match)."""
    name, value = rng.choice(NAMES), rng.randrange(10, 100)
    overhead = prompt_tokens(tokenizer, fact_sentence(name, value) + "\n\n" + question(name))
    n_lines = max(1, (length - overhead) // LINE_TOKENS)
    while True:
        lines = place_facts(document(n_lines, rng), {name: value}, rng, depths=[depth / 100])
        prompt = "\n".join(lines) + "\n\n" + question(name)
        used = prompt_tokens(tokenizer, prompt)
        if used <= length or n_lines == 1:
            return {"id": case_id, "length": length, "depth": depth, "prompt": prompt, "answer": str(value),
                    "tokens": used}
        n_lines -= 1 + (used - length) // LINE_TOKENS


def synth_corpus(directory: str | Path, n_documents: int, min_lines: int, max_lines: int, min_facts: int,
                 max_facts: int, seed: int) -> Path:
    """Long toy documents as .txt files: the corpus `tenfold synth` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n_documents):
        record = plain_record(rng.randint(min_lines, max_lines), rng, rng.randint(min_facts, max_facts))
        (directory / f"doc-{i:05d}.txt").write_text(record["text"] + "\n")
    return directory


# ---- the tiny tokenizer and model ----

# Llama-3-8B-Instruct's own template (trims each message, bos before the first one).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|pad|>"]


def toy_texts() -> list[str]:
    """What `tenfold/tiny-llama`'s tokenizer learns from: the chat template's role names and toy records."""
    texts = ["user assistant system"] * 20
    for record in toy_records(200, seed=1234):
        texts.append(record["text"] if "text" in record else " ".join(t["content"] for t in record["conversations"]))
    return texts


def build_tokenizer(texts: list[str] | None = None, vocab_size: int = 512,
                    chat_template: str | None = LLAMA3_CHAT_TEMPLATE):
    """Byte-level BPE trained on `texts` (default: toy_texts()): it encodes any string, like Llama-3's
    tokenizer, with Llama-3's special tokens and (by default) chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(toy_texts() if texts is None else texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|pad|>",
        model_max_length=1 << 30,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def llama_config(tokenizer=None, vocab_size: int | None = None, hidden_size: int = 64,
                 intermediate_size: int | None = None, num_hidden_layers: int = 2, num_attention_heads: int = 4,
                 num_key_value_heads: int | None = 2, rope_theta: float = 500.0, max_position_embeddings: int = 256,
                 tie_word_embeddings: bool = False):
    """A LlamaConfig (its own argument names): the tokenizer's vocabulary and special tokens, or `vocab_size`
    with LlamaConfig's default token ids; the MLP twice the width unless `intermediate_size` says otherwise."""
    from transformers import LlamaConfig

    tokens = {} if tokenizer is None else dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(
        vocab_size=len(tokenizer) if tokenizer is not None else vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings, rope_theta=rope_theta,
        tie_word_embeddings=tie_word_embeddings, **tokens)


def build_model(tokenizer=None, seed: int = 0, device: str = "cpu", **config):
    """A LlamaForCausalLM of `llama_config(tokenizer, **config)`, random weights drawn after seeding torch
    with `seed` (the same config and seed give the same weights), built on `device`."""
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(tokenizer, **config)
    torch.manual_seed(seed)  # torch's generator alone draws the weights: Python's and numpy's are left alone
    with torch.device(device):
        return LlamaForCausalLM(config)


def write_tiny_llama(out_dir: str | Path, **model_kwargs) -> Path:
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, **model_kwargs)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(write_tiny_llama(sys.argv[1]))
