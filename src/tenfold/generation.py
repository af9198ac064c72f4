"""Generation for every verb: model backends (transformers, vLLM, an OpenAI-compatible endpoint) and the
one OpenAI client.

Every benchmark talks to one `Backend`: `generate` (greedy, stops at every end token the chat
template uses, returns the completions only; a task's `GenerationControls` add stop strings and forbid
tokens as the first one) and, for the transformers backend, `next_token_logprobs` (MMLU).
`load_backend` accepts a model directory, a hub id, `tenfold/<name>`, a GGUF file or the output of
`tenfold train` (base + adapter, unmerged), and can override the RoPE base in memory so a training-free
extension is measured with the same code as a trained one. synth's local generator is a TransformersBackend
too, and synth, eval and the needle judge make their OpenAI clients with `openai_client`.

torch and openai are imported where used: synth's OpenAI generator builds its client here and starts
without the seconds torch takes.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tenfold.errors import RecipeError, UserError
from tenfold.io import file_sha256
from tenfold.models import (
    adapter_dir,
    end_of_turn_token,
    is_adapter_dir,
    load_model,
    load_run,
    load_tokenizer,
    resolve_model_path,
)
from tenfold.recipe import RopeSettings

if TYPE_CHECKING:
    import torch

# End-of-turn / end-of-text markers of the common chat templates. Llama-3's generation config stops at
# both <|end_of_text|> and <|eot_id|>; a tokenizer whose eos is only one of them would run on past the
# other (FlagEmbedding issue #882), so every marker the vocabulary holds is a stop token.
END_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>", "<end_of_turn>",
              "<|end|>", "</s>")


OPENAI_MAX_STOP = 4  # stop strings OpenAI's API takes per request

# The key sent when the environment holds none: local servers (vLLM, llama.cpp, `transformers serve`) take
# any key, and "EMPTY" is the one vLLM's documentation uses.
MISSING_KEY = "EMPTY"


def openai_client(base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", asynchronous: bool = False,
                  **options):
    """The OpenAI client of every tenfold verb (`openai.OpenAI`, or `openai.AsyncOpenAI` if asynchronous).

    The key is read from the environment variable `api_key_env` and handed to the client only: it is never
    logged, cached or written. base_url: default $OPENAI_BASE_URL, else OpenAI's own API, which needs a key.
    `options` go to the client (max_retries, timeout, http_client...).
    """
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    key = os.environ.get(api_key_env)
    if not key and not base_url:
        raise UserError(f"no API key: set the environment variable {api_key_env} (keys are never read from "
                        f"recipes or flags), or point --base-url at a local server")
    client = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return client(api_key=key or MISSING_KEY, base_url=base_url, **options)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The eos ids of the generation config and tokenizer, the chat template's end-of-turn token, and every
    known end marker in the vocabulary."""
    ids = {end_of_turn_token(tokenizer)} - {None}
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_TOKENS if token in vocab)
    return sorted(ids)


# The chat template a prompt is rendered with: the tokenizer's own; the string the paper's code writes for
# Llama-3 (FlagEmbedding's fastchat-style "llama-3" template: no system turn, no trim of the message, the BOS
# left to the tokenizer), which Llama-3-8B-Instruct's own template differs from by trimming the message; or
# what LongBench's pred.py does for a model its build_chat has no branch for ("none": the message as it is)
# and for Llama-2 ("longbench-llama2": [INST]message[/INST], without the spaces of Llama-2's own template).
# In every one but the tokenizer's the BOS is the tokenizer's to add, as pred.py's tokenizer call adds it.
CHAT_TEMPLATES = {
    "tokenizer": None,
    "llama-3": "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
               "{{ message['content'] }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    "none": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
    "longbench-llama2": "{% for message in messages %}[INST]{{ message['content'] }}[/INST]{% endfor %}",
}


def use_chat_template(tokenizer, choice: str) -> None:
    """Render prompts with CHAT_TEMPLATES[choice] from now on ("tokenizer": leave the tokenizer's own)."""
    if choice not in CHAT_TEMPLATES:
        raise UserError(f"unknown chat template {choice!r}; use one of {', '.join(CHAT_TEMPLATES)}")
    if CHAT_TEMPLATES[choice] is not None:
        tokenizer.chat_template = CHAT_TEMPLATES[choice]


def render_prompt(tokenizer, prompt: str, chat: bool, answer_prefix: str = "") -> list[int]:
    """Token ids of one prompt: in the chat template as one user turn (ready for the answer), or raw.

    `answer_prefix` starts the answer (RULER's "The special magic number ... is"), after the template."""
    prefix = list(tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]) if answer_prefix else []
    if not chat:
        return list(tokenizer(prompt)["input_ids"]) + prefix
    if not tokenizer.chat_template:
        raise UserError("the tokenizer has no chat template; pass chat=False (--no-chat) or a tokenizer that has one")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    # A template that writes the BOS itself must not get a second one from the tokenizer.
    has_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    return list(tokenizer(text, add_special_tokens=not has_bos)["input_ids"]) + prefix


@dataclass(frozen=True)
class GenerationControls:
    """A task's rules for its answers (LongBench sets them per dataset); the defaults change nothing.

    stop: more stop strings: an answer ends before the first one (left out, as OpenAI's and vLLM's `stop`
      leave it), exactly as if the text generated without it were cut there.
    stop_tokens: more stop tokens, as texts: an answer ends at the first token that reads as exactly one of them
      (kept, as an eos token is), the way the paper's LongBench code appends the id of "\n" to eos_token_id:
      a "\n\n" token does not stop it where the tokenizer has one.
    suppress_first: the first generated token may not be one of these texts (transformers'
      `begin_suppress_tokens`): each text bans every token of the vocabulary that reads as exactly it,
      for the first token only; later tokens may be any.
    suppress_first_end: nor may the first token be an end token (no empty answer).
    A benchmark that uses controls puts them in the settings its predictions are keyed on (claim_predictions).
    """

    stop: tuple[str, ...] = ()
    stop_tokens: tuple[str, ...] = ()
    suppress_first: tuple[str, ...] = ()
    suppress_first_end: bool = False

    def __post_init__(self):
        for field in ("stop", "stop_tokens", "suppress_first"):
            value = getattr(self, field)
            texts = (value,) if isinstance(value, str) else tuple(value)
            if not all(isinstance(text, str) and text for text in texts):
                raise UserError(f"GenerationControls.{field}: give non-empty strings, not {value!r}")
            object.__setattr__(self, field, texts)

    @property
    def suppresses(self) -> bool:
        return bool(self.suppress_first) or self.suppress_first_end


NO_CONTROLS = GenerationControls()


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first occurrence of any stop string."""
    return text[:min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))]


def tokens_reading(tokenizer, texts: tuple[str, ...]) -> list[int]:
    """Every token id whose text alone is one of `texts` ("\n" is one token in Llama-3, "<0x0A>" in Llama-2)."""
    vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids = [i for i, text in enumerate(vocab) if text in texts]
    missing = set(texts) - {vocab[i] for i in ids}
    if missing:
        raise UserError(f"{tokenizer.name_or_path}: no token reads {sorted(missing)!r} alone (a stop token or a "
                        f"first-token ban); give texts of single tokens")
    return ids


class Backend:
    """What a benchmark needs from a model. `tokenizer` counts and cuts text in the model's tokens."""

    tokenizer = None
    max_length: int | None = None
    name: str = ""
    stop_ids: list[int] = []

    def generate(self, prompts: list[str], max_new_tokens: int, chat: bool = True,
                 answer_prefix: str | list[str] = "", controls: GenerationControls | None = None) -> list[str]:
        raise NotImplementedError

    def stop_ids_for(self, controls: GenerationControls) -> list[int]:
        """The end tokens and the controls' stop tokens (looked up once per controls)."""
        if not controls.stop_tokens:
            return self.stop_ids
        cache = self.__dict__.setdefault("_stop_ids", {})
        if controls not in cache:
            cache[controls] = sorted({*self.stop_ids, *tokens_reading(self.tokenizer, controls.stop_tokens)})
        return cache[controls]

    def first_token_ban(self, controls: GenerationControls) -> list[int]:
        """The token ids `controls` forbid as the first generated token (looked up once per controls)."""
        if not controls.suppresses:
            return []
        cache = self.__dict__.setdefault("_first_token_bans", {})
        if controls not in cache:
            banned = set(self.stop_ids) if controls.suppress_first_end else set()
            if controls.suppress_first:
                banned.update(tokens_reading(self.tokenizer, controls.suppress_first))
            cache[controls] = sorted(banned)
        return cache[controls]

    def next_token_logprobs(self, prompts: list[str], chat: bool = True) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} gives no token scores; use the transformers backend")

    def prompt_length(self, prompt: str, chat: bool = True, answer_prefix: str = "") -> int:
        """Tokens the model reads for this prompt (template included)."""
        if self.tokenizer is None:
            raise UserError(f"{self.name}: counting tokens needs a tokenizer; pass --tokenizer (a hub id or path)")
        return len(render_prompt(self.tokenizer, prompt, chat, answer_prefix))

    def describe(self) -> dict:
        return {"backend": type(self).__name__, "model": self.name, "max_length": self.max_length}

    def identity(self) -> dict:
        """Everything of the backend that changes a prediction (the key `tenfold eval` resumes on)."""
        return {"kind": type(self).__name__, "model": self.name}


def model_identity(model: str) -> dict:
    """A local model by its absolute path, a hub id as is; a `tenfold train` output by its base model and its
    adapter's weights, not its folder (a moved or copied run keeps its predictions)."""
    path = resolve_model_path(model)
    if not Path(path).exists():
        return {"model": path}
    if not is_adapter_dir(path):
        return {"model": str(Path(path).resolve())}
    weights = adapter_dir(path) / "adapter_model.safetensors"
    return {"model": json.loads((adapter_dir(path) / "tenfold.json").read_text()).get("base_model"),
            "adapter_sha256": file_sha256(weights) if weights.is_file() else None}


class TransformersBackend(Backend):
    def __init__(self, model: str, rope_theta: float | None = None, tokenizer: str | None = None,
                 dtype: str = "auto", device: str | None = None, batch_size: int = 8,
                 max_batch_tokens: int = 131072, max_length: int | None = None, attn_implementation: str = "sdpa",
                 chat_template: str = "tokenizer"):
        import torch

        self.name, self.tokenizer_name, self.chat_template = model, tokenizer, chat_template
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            dtype = "bfloat16" if cuda_bf16 else "float32"
        path = resolve_model_path(model)
        if is_adapter_dir(path):
            self.model, _, self.rope = load_run(path, dtype, rope_theta)
            tokenizer = tokenizer or str(adapter_dir(path))  # `tenfold train` saves the tokenizer with the adapter
        else:
            rope = RopeSettings(theta=rope_theta) if rope_theta else None
            self.model, self.rope = load_model(path, rope, dtype=dtype, attn_implementation=attn_implementation)
        self.model.to(self.device).eval()
        self.tokenizer = load_tokenizer(tokenizer or path)
        self.tokenizer.padding_side = "left"
        use_chat_template(self.tokenizer, chat_template)
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self.max_length = max_length or self.model.config.max_position_embeddings
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens

    def describe(self) -> dict:
        return {**super().describe(), "rope": self.rope, "stop_token_ids": self.stop_ids,
                "dtype": str(self.model.dtype)}

    def identity(self) -> dict:
        return {"kind": "transformers", **model_identity(self.name), "rope": self.rope,
                "dtype": str(self.model.dtype), "tokenizer": self.tokenizer_name, "chat_template": self.chat_template}

    def generation_bytes(self, longest: int) -> int:
        """About what one batch of prompts up to `longest` tokens adds while generating: the KV cache of
        every layer, and one layer's activations during the prompt's forward pass (weights are loaded already)."""
        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        per_token = self.model.dtype.itemsize * (2 * config.num_hidden_layers * kv_heads * head_dim
                                                 + 4 * config.hidden_size + 2 * config.intermediate_size)
        return per_token * max(longest, min(self.max_batch_tokens, longest * self.batch_size))

    def free_bytes(self) -> int:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        with open("/proc/meminfo") as f:
            available = next(line for line in f if line.startswith("MemAvailable:"))
        return int(available.split()[1]) * 1024

    def _batches(self, encoded: list[list[int]], extra_tokens: int = 0):
        """Indices grouped into batches of similar length (little padding), within the batch limits."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        batch: list[int] = []
        for i in order:
            longest = len(encoded[batch[0]]) + extra_tokens if batch else len(encoded[i]) + extra_tokens
            if batch and (len(batch) >= self.batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    def generate_ids(self, prompts: list[str], max_new_tokens: int, chat: bool = True,
                     answer_prefix: str | list[str] = "", controls: GenerationControls | None = None,
                     temperature: float = 0.0) -> list[list[int]]:
        """New token ids per prompt, cut after the first stop token (which is kept). Greedy; temperature > 0
        samples instead (synth), with the model's own generation config for top-p and top-k.

        Under `controls`: a stop string ends a prompt's ids at the token that completes it (`generate` cuts
        its text before the stop string), and the first token is none of those they forbid."""
        import torch

        controls = controls or NO_CONTROLS
        prefixes = answer_prefix if isinstance(answer_prefix, list) else [answer_prefix] * len(prompts)
        encoded = [render_prompt(self.tokenizer, p, chat, a) for p, a in zip(prompts, prefixes)]
        decoding = {"do_sample": True, "temperature": temperature} if temperature > 0 else \
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        # transformers' own: StopStringCriteria (a stop string may also end in a token that runs past it; it
        # matches the end of prompt + answer, so a stop string of several characters that begins in the
        # prompt's last ones also ends the answer) and SuppressTokensAtBeginLogitsProcessor, from the first
        # generated position (left padding: the same for every row)
        if controls.stop:
            decoding.update(stop_strings=list(controls.stop), tokenizer=self.tokenizer)
        if controls.suppresses:
            decoding["begin_suppress_tokens"] = self.first_token_ban(controls)
        stop_ids = self.stop_ids_for(controls)
        outputs: list[list[int]] = [[] for _ in prompts]
        for batch in self._batches(encoded, max_new_tokens):
            ids, mask = self._pad([encoded[i] for i in batch])
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=1, **decoding,
                    eos_token_id=stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                )[:, ids.shape[1]:].tolist()
            for i, row in zip(batch, generated):
                stop = next((t for t, token in enumerate(row) if token in stop_ids), None)
                outputs[i] = self._cut_at_stop_string(row if stop is None else row[:stop + 1], controls.stop)
        return outputs

    def _cut_at_stop_string(self, row: list[int], stop: tuple[str, ...]) -> list[int]:
        """The row up to the token that completes the first stop string (a row that stopped there is padded
        out to the batch's length): the shortest prefix whose text holds one, found by bisection."""
        def holds_stop(length: int) -> bool:
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            return any(s in text for s in stop)

        if not stop or not holds_stop(len(row)):
            return row
        return row[:bisect.bisect_left(range(len(row) + 1), True, key=holds_stop)]

    def generate(self, prompts: list[str], max_new_tokens: int, chat: bool = True,
                 answer_prefix: str | list[str] = "", controls: GenerationControls | None = None) -> list[str]:
        stop = (controls or NO_CONTROLS).stop
        return [cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)
                for row in self.generate_ids(prompts, max_new_tokens, chat, answer_prefix, controls)]

    def next_token_logprobs(self, prompts: list[str], chat: bool = True) -> torch.Tensor:
        import torch

        encoded = [render_prompt(self.tokenizer, p, chat) for p in prompts]
        result = torch.empty(len(prompts), self.model.config.vocab_size)
        for batch in self._batches(encoded):
            ids, mask = self._pad([encoded[i] for i in batch])
            with torch.no_grad():  # logits_to_keep=1: only the last position's logits, never [batch, length, vocab]
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
            result[batch] = torch.log_softmax(logits.float(), dim=-1).cpu()
        return result


class OpenAIBackend(Backend):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM serve, llama.cpp, TGI...); the key comes from the environment."""

    def __init__(self, model: str, base_url: str | None = None, tokenizer: str | None = None,
                 max_length: int | None = None, api_key_env: str = "OPENAI_API_KEY",
                 system_prompt: str | None = None):
        self.name = model
        self.client = openai_client(base_url, api_key_env)
        self.max_length, self.system_prompt = max_length, system_prompt
        if tokenizer:
            self.tokenizer = load_tokenizer(tokenizer)

    def identity(self) -> dict:
        return {"kind": "openai", "model": self.name, "base_url": str(getattr(self.client, "base_url", "")),
                "system_prompt": self.system_prompt}

    def prompt_length(self, prompt: str, chat: bool = True, answer_prefix: str = "") -> int:  # noqa: ARG002
        # `chat` is the Backend signature's; the server applies its own template, so only the text is counted
        if self.tokenizer is None:
            raise UserError(f"{self.name}: counting tokens needs a tokenizer; pass --tokenizer (a hub id or path "
                             f"of a tokenizer close to the served model's)")
        return len(self.tokenizer(prompt + answer_prefix, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], max_new_tokens: int, chat: bool = True,
                 answer_prefix: str | list[str] = "", controls: GenerationControls | None = None) -> list[str]:
        """One request per prompt. Of the controls only stop strings pass: OpenAI's API takes at most
        OPENAI_MAX_STOP, and nothing there bans a token for the first position only (`logit_bias` bans it
        everywhere, in the served model's token ids), so first-token suppression is refused, not imitated."""
        controls = controls or NO_CONTROLS
        if controls.suppresses:
            raise UserError(f"{self.name}: an OpenAI-compatible API cannot forbid a first token only "
                            f"(suppress_first, suppress_first_end); run this task with --backend transformers "
                            f"or vllm")
        if controls.stop_tokens:
            raise UserError(f"{self.name}: an OpenAI-compatible API stops at strings, not at tokens (stop_tokens "
                            f"{list(controls.stop_tokens)!r}: a stop string would also stop inside a longer token); "
                            f"run this task with --backend transformers or vllm")
        if len(controls.stop) > OPENAI_MAX_STOP:
            raise UserError(f"{self.name}: OpenAI's API takes at most {OPENAI_MAX_STOP} stop strings, this task "
                            f"has {len(controls.stop)}; run it with --backend transformers or vllm")
        options = {"model": self.name, "temperature": 0, "max_tokens": max_new_tokens}
        if controls.stop:
            options["stop"] = list(controls.stop)
        completions = []  # an API cannot start the answer for the model: the answer prefix ends the prompt
        prefixes = answer_prefix if isinstance(answer_prefix, list) else [answer_prefix] * len(prompts)
        for prompt in (p + a for p, a in zip(prompts, prefixes)):
            if chat:
                messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + \
                           [{"role": "user", "content": prompt}]
                reply = self.client.chat.completions.create(messages=messages, **options)
                text = reply.choices[0].message.content or ""
            else:
                text = self.client.completions.create(prompt=prompt, **options).choices[0].text or ""
            completions.append(cut_at_stop(text, controls.stop))  # a server that sends the stop string back
        return completions


class VLLMBackend(Backend):
    """vLLM on a GPU (not run by the tests: they have neither vLLM nor a GPU)."""

    def __init__(self, model: str, rope_theta: float | None = None, tokenizer: str | None = None,
                 max_length: int | None = None, chat_template: str = "tokenizer", **engine_options):
        from vllm import LLM  # noqa: F401  (ImportError says what to install)

        path = resolve_model_path(model)
        if is_adapter_dir(path):
            raise UserError(f"{model}: vLLM needs a standalone model; run `tenfold merge` first")
        overrides = {"rope_theta": rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta}} \
            if rope_theta else None
        self.name, self.rope_theta, self.chat_template = model, rope_theta, chat_template
        self.llm = LLM(model=path, tokenizer=tokenizer or path, max_model_len=max_length, hf_overrides=overrides,
                       **engine_options)
        self.tokenizer = load_tokenizer(tokenizer or path)  # prompts go to vLLM as token ids rendered here
        use_chat_template(self.tokenizer, chat_template)
        self.max_length = max_length or self.llm.llm_engine.model_config.max_model_len
        self.stop_ids = stop_token_ids(self.tokenizer, None)

    def identity(self) -> dict:
        return {"kind": "vllm", **model_identity(self.name), "rope_theta": self.rope_theta,
                "chat_template": self.chat_template}

    def generate(self, prompts: list[str], max_new_tokens: int, chat: bool = True,
                 answer_prefix: str | list[str] = "", controls: GenerationControls | None = None) -> list[str]:
        """Greedy, with SamplingParams' own stop strings. A first-token ban: vLLM's logits processors are
        engine-wide (V1), so the first token is generated alone under a logit bias that bans the tokens, and the
        rest from the prompt plus that token (a second prefill, mostly from vLLM's prefix cache).
        Written against vLLM's documented SamplingParams and untested here (no vLLM, no GPU)."""
        from vllm import SamplingParams, TokensPrompt

        controls = controls or NO_CONTROLS
        prefixes = answer_prefix if isinstance(answer_prefix, list) else [answer_prefix] * len(prompts)
        encoded = [render_prompt(self.tokenizer, p, chat, a) for p, a in zip(prompts, prefixes)]
        stop = {"stop": list(controls.stop)} if controls.stop else {}
        stop_ids = self.stop_ids_for(controls)
        if not controls.suppresses:
            params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids, **stop)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params,
                                        use_tqdm=False)
            return [cut_at_stop(out.outputs[0].text, controls.stop) for out in outputs]
        # -100: OpenAI's "ban" bias, which vLLM's server clamps to; far beyond any gap between two logits
        ban = {token: -100.0 for token in self.first_token_ban(controls)}
        first = SamplingParams(temperature=0.0, max_tokens=1, logit_bias=ban)
        firsts = [out.outputs[0].token_ids[0] for out in self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in encoded], first, use_tqdm=False)]
        rows = [[token] for token in firsts]
        todo = [i for i, token in enumerate(firsts) if token not in stop_ids and max_new_tokens > 1]
        if todo:
            rest = SamplingParams(temperature=0.0, max_tokens=max_new_tokens - 1, stop_token_ids=stop_ids, **stop)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=encoded[i] + rows[i]) for i in todo], rest,
                                        use_tqdm=False)
            for i, out in zip(todo, outputs):
                rows[i] += list(out.outputs[0].token_ids)
        # the stop strings again: one may straddle the first token and the rest
        return [cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), controls.stop) for row in rows]


BACKENDS = {"transformers": TransformersBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}


def load_backend(model: str, backend: str = "transformers", rope_theta: float | None = None,
                 tokenizer: str | None = None, **options) -> Backend:
    """A model ready for the benchmarks. `rope_theta` overrides the RoPE base in memory (not for openai)."""
    if backend not in BACKENDS:
        raise RecipeError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "openai":
        if rope_theta is not None:
            raise UserError("--rope-theta cannot change a model behind an API; serve it with the base you want")
        if options.pop("chat_template", "tokenizer") != "tokenizer":
            raise UserError("--chat-template: a model behind an API is rendered by its server's template; "
                            "serve it with the template you want")
        return OpenAIBackend(model, tokenizer=tokenizer, **options)
    return BACKENDS[backend](model, rope_theta=rope_theta, tokenizer=tokenizer, **options)
