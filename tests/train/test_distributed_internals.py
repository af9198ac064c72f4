"""What tenfold relies on in accelerate and transformers beyond their documented API, each behind one function
of tenfold's: these tests fail when a library release changes it. (transformers' RoPE initialisers:
tests/test_rope.py; Llama's RMSNorm forward, read by rms_norm.computes_llama_rms_norm: tests/train/test_rms_norm.py.)"""

import pytest
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from transformers import AttentionInterface, AttentionMaskInterface

from tenfold.toy import build_model
from tenfold.train.distributed import override_process_state, reset_accelerator_state


@pytest.fixture
def accelerate_state():
    """accelerate's state is the process's, shared by every test: put it back as it was afterwards."""
    saved = [(store, dict(store)) for store in (PartialState._shared_state, AcceleratorState._shared_state)]
    yield
    for store, contents in saved:
        store.clear()
        store.update(contents)


@pytest.mark.usefixtures("accelerate_state")
def test_override_process_state_reaches_every_reader_of_accelerates_state():
    reset_accelerator_state()
    accelerator = Accelerator(cpu=True)
    assert accelerator.distributed_type == DistributedType.NO and accelerator.num_processes == 1
    plugin = object()
    override_process_state(accelerator, fsdp_plugin=plugin, distributed_type=DistributedType.FSDP,
                           num_processes=2, process_index=1)
    # The accelerator reads AcceleratorState's dict, PartialState() its own. (A new AcceleratorState() would copy
    # PartialState's into its dict and hide a missing write, so none is made here.)
    for state in (accelerator, accelerator.state, PartialState()):
        assert state.distributed_type == DistributedType.FSDP
        assert (state.num_processes, state.process_index, state.is_main_process) == (2, 1, False)
    assert accelerator.state.fsdp_plugin is plugin


@pytest.mark.usefixtures("accelerate_state")
def test_reset_accelerator_state_lets_a_second_accelerator_take_another_precision():
    reset_accelerator_state()
    assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    with pytest.raises(ValueError, match="already been initialized"):  # why train() resets first
        Accelerator(cpu=True, mixed_precision="bf16")
    processes = dict(PartialState._shared_state)
    reset_accelerator_state()
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    assert PartialState._shared_state == processes  # the processes stay


def test_a_registered_attention_gets_the_shapes_ulysses_attention_expects_and_its_mask_may_be_none():
    """sequence_parallel.setup registers its attention and a mask function returning None under one name."""
    seen = []

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        seen.append((query.shape, key.shape, attention_mask, scaling))
        out = torch.nn.functional.scaled_dot_product_attention(query, key.repeat_interleave(2, 1),
                                                               value.repeat_interleave(2, 1), is_causal=True,
                                                               scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("tenfold_test", attention)
    AttentionMaskInterface.register("tenfold_test", lambda *args, **kwargs: None)
    model = build_model(vocab_size=32, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    ids = torch.arange(7).unsqueeze(0)
    expected = model(input_ids=ids).logits
    model.set_attn_implementation("tenfold_test")
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert seen == [(torch.Size([1, 4, 7, 8]), torch.Size([1, 2, 7, 8]), None, 8 ** -0.5)] * 2
