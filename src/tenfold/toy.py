"""A toy world of long documents with facts in them, and the records tenfold trains on.

The tiny CPU recipe and the tests train on these: plain documents (language-model loss) and
long conversations whose first user turn holds a document and a question about a fact hidden
somewhere in it, with one more user/assistant turn per further question (DESIGN.md's formats).
Everything is drawn from a seeded random generator, so the same seed gives the same records.

It also holds the tiny Llama-architecture model with a byte-level BPE tokenizer and Llama-3's chat
template that `recipes/tiny-cpu.yaml` trains (shipped as `tenfold/tiny-llama`, random weights from a
fixed seed) and that the tests build for themselves. Rebuild the shipped copy with
`python -m tenfold.toy src/tenfold/assets/tiny-llama`.
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


def diary_line(day: int, rng: random.Random) -> str:
    count = rng.randrange(len(NUMBERS))
    obj = rng.choice(OBJECTS) + ("s" if count > 0 else "")
    return (f"day {day % 100} : the {rng.choice(COLOURS)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} "
            f"{NUMBERS[count]} {rng.choice(COLOURS)} {obj} .")


def document(n_lines: int, rng: random.Random) -> list[str]:
    start = rng.randrange(100)
    return [diary_line(start + i, rng) for i in range(n_lines)]


def plain_record(index: int, n_lines: int, rng: random.Random) -> dict:
    return {"id": f"toy-plain-{index}", "source": "toy", "text": "\n".join(document(n_lines, rng))}


def conversation_record(index: int, n_lines: int, n_facts: int, rng: random.Random) -> dict:
    lines = document(n_lines, rng)
    names = rng.sample(NAMES, n_facts)
    facts = {name: rng.randrange(10, 100) for name in names}
    for name in names:
        lines.insert(rng.randrange(len(lines) + 1), f"the number of {name} is {facts[name]} .")
    turns = []
    for i, name in enumerate(names):
        question = f"what is the number of {name} ?"
        turns.append({"role": "user", "content": "\n".join(lines) + "\n\n" + question if i == 0 else question})
        turns.append({"role": "assistant", "content": str(facts[name])})
    return {"id": f"toy-chat-{index}", "source": "toy", "task": "multi_detail_qa", "conversations": turns,
            "meta": {"facts": facts}}


def toy_records(n: int, seed: int = 0, min_lines: int = 8, max_lines: int = 64, max_facts: int = 3) -> list[dict]:
    """n records, alternating long conversations and plain documents."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        n_lines = rng.randint(min_lines, max_lines)
        if i % 2 == 0:
            records.append(conversation_record(i, n_lines, rng.randint(1, max_facts), rng))
        else:
            records.append(plain_record(i, n_lines, rng))
    return records


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


def build_model(tokenizer, hidden_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, num_kv_heads: int = 2, rope_theta: float = 500.0,
                max_position_embeddings: int = 256, seed: int = 0, tie_word_embeddings: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, rope_theta=rope_theta,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
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
