"""The decode of transformers 4.x, which the reference eval codes ran, for the fixture makers (scripts/*_fixture.py).

tenfold runs transformers 5; the reference codes ran 4.x (the paper's FlagEmbedding code 4.35.1 and 4.39.3,
LongBench's pred.py 4.31.0), whose decode differs where spaces are cleaned up. Kept apart from tenfold's own
rule (tenfold.eval.runner.transformers4_clean_up) so that the parity tests compare two implementations.
"""

from __future__ import annotations


class Transformers4Decode:
    """The tokenizer, decoding as transformers 4.x did (the paper ran 4.35.1 and 4.39.3, LongBench's pred.py
    4.31.0), recording the ids.

    Its decode applied the tokenizer's clean_up_tokenization (" ." -> ".", " 's" -> "'s", ...) when the call
    or the tokenizer's config asked for it or said nothing (default True), BPE tokenizers included;
    transformers 5 skips it for BPE. tiny-llama's tokenizer files cannot be loaded by 4.x, so that one rule
    is kept here; the clean-up itself is transformers' own function. `decoded`: the ids of every decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, []

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        self.decoded.append(ids.tolist() if hasattr(ids, "tolist") else list(ids))  # a tensor (pred.py) or a list
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False, **kwargs)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.tokenizer.init_kwargs.get("clean_up_tokenization_spaces", True)
        return self.tokenizer.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, rows, **kwargs):
        return [self.decode(row, **kwargs) for row in rows]

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)
