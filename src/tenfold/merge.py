"""`tenfold merge`: fold a trained adapter and its fully trained modules into a standalone model.

The base is loaded in full precision (not 4-bit) and the LoRA deltas are added to it, as QLoRA
users do; the output is a plain transformers directory (safetensors) whose config carries the
new RoPE base in both layouts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenfold.config import setting
from tenfold.errors import UserError
from tenfold.models import adapter_dir, check_rope, load_run, load_tokenizer
from tenfold.rope import write_rope_to_config_file


@dataclass
class MergeSettings:
    """`tenfold merge RUN_DIR --output-dir DIR`."""
    run_dir: str = setting(help="output directory of `tenfold train` (or its adapter/ folder)", positional=True)
    output_dir: str = setting(help="the standalone model's folder")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting("auto", "the merged weights' dtype "
                                                                               "(auto: the checkpoint's)")
    overwrite: bool = setting(False, "replace the contents of a non-empty --output-dir")


def merge(settings: MergeSettings) -> Path:
    """Write a standalone model to settings.output_dir; returns that folder.

    A non-empty output_dir is refused unless overwrite (then its contents are replaced); one inside the run
    (or holding it) always is.
    """
    run_dir, output_dir = settings.run_dir, Path(settings.output_dir)
    check_output_dir(run_dir, output_dir, settings.overwrite)
    model, meta, _ = load_run(run_dir, settings.dtype)
    merged = model.merge_and_unload()
    check_rope(merged, meta["rope_parameters"])
    tokenizer = load_tokenizer(str(adapter_dir(run_dir)))
    try:
        if output_dir.exists():
            shutil.rmtree(output_dir)
        merged.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        write_rope_to_config_file(output_dir / "config.json", meta["rope_parameters"])
    except OSError as e:  # no permission, a full disk (safetensors reports the weights' own failure its way)
        raise UserError(f"could not write {output_dir}: {e.strerror or e}; free space or give another "
                        f"--output-dir, then merge again with --overwrite") from None
    return output_dir


def check_output_dir(run_dir: str | Path, output_dir: Path, overwrite: bool) -> None:
    run, out = Path(run_dir).resolve(), output_dir.resolve()
    if out == run or run in out.parents or out in run.parents:
        # transformers loads a model folder that holds adapter_config.json with the LoRA applied a second time
        raise UserError(f"--output-dir {output_dir} is inside the run {run_dir} or holds it; "
                        f"choose a folder outside it, e.g. --output-dir {run}-merged")
    if output_dir.is_file():
        raise UserError(f"--output-dir {output_dir} is a file; choose a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"--output-dir {output_dir} is not empty; pass --overwrite to replace its contents, "
                        f"or choose a new folder")
