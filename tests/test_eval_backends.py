import copy

import pytest
import torch
from tokenizers import processors

from fake_openai import FakeServer
from tenfold.errors import UserError
from tenfold.generation import MISSING_KEY, load_backend, openai_client, render_prompt, stop_token_ids
from tenfold.recipe import load_recipe
from tenfold.rope import rotary_inv_freq
from tenfold.train.loop import train


def base_inv_freq(theta, head_dim):
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def test_stop_tokens_are_every_end_marker_of_the_llama3_template(tiny_backend):
    tok = tiny_backend.tokenizer
    assert tok.eos_token == "<|eot_id|>"  # the tokenizer alone knows only one of the two
    ids = stop_token_ids(tok, tiny_backend.model.generation_config)
    assert tok.convert_tokens_to_ids("<|eot_id|>") in ids
    assert tok.convert_tokens_to_ids("<|end_of_text|>") in ids
    assert tiny_backend.stop_ids == ids


def test_stop_tokens_include_any_templates_end_of_turn_token():
    """A template whose turns end with a token no list knows of: generation must stop there too."""
    from tenfold.toy import build_tokenizer

    tokenizer = build_tokenizer(chat_template="{% for m in messages %}<|start_header_id|>{{ m['role'] }}\n"
                                              "{{ m['content'] }}<turn-over>\n{% endfor %}")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<turn-over>"]})
    assert tokenizer.convert_tokens_to_ids("<turn-over>") in stop_token_ids(tokenizer)


def test_generation_stops_at_end_of_text_though_the_eos_is_eot(tiny_backend):
    end_of_text = tiny_backend.tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    lm_head = tiny_backend.model.lm_head
    forced = torch.nn.Linear(lm_head.in_features, lm_head.out_features, bias=True)
    with torch.no_grad():
        forced.weight.zero_()
        forced.bias.zero_()
        forced.bias[end_of_text] = 100.0  # the model now always says <|end_of_text|>
    tiny_backend.model.lm_head = forced
    try:
        assert tiny_backend.generate_ids(["what is the number of anna ?"], max_new_tokens=8) == [[end_of_text]]
        assert tiny_backend.generate(["what is the number of anna ?", "hi"], max_new_tokens=8) == ["", ""]
    finally:
        tiny_backend.model.lm_head = lm_head


def test_chat_prompt_has_exactly_one_bos_and_raw_prompt_keeps_the_tokenizers_own(tiny_backend):
    tok = copy.deepcopy(tiny_backend.tokenizer)
    bos = tok.bos_token_id  # like Llama-3's tokenizer, this one now adds a BOS by itself
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                                   special_tokens=[("<|begin_of_text|>", bos)])
    ids = render_prompt(tok, "what is the number of anna ?", chat=True)
    assert ids[0] == bos and ids.count(bos) == 1
    assert tok.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    raw = render_prompt(tok, "day 3 : the red fox", chat=False)
    assert raw[0] == bos and raw == tok("day 3 : the red fox")["input_ids"]


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_backend):
    prompts = ["day 3 : the red fox paints two blue doors .", "hi", "what is the number of anna ? " * 6,
               "the green owl", "day 9 : the gold hen hides one cup . day 10 :"]
    batched = tiny_backend.generate(prompts, max_new_tokens=6)
    single = [tiny_backend.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)
    assert batched == tiny_backend.generate(prompts, max_new_tokens=6)  # greedy: deterministic


def test_next_token_logprobs_match_a_plain_forward_pass(tiny_backend):
    prompts = ["what is the number of anna ?", "hi there, the red fox", "x"]
    logprobs = tiny_backend.next_token_logprobs(prompts)
    assert logprobs.shape == (3, tiny_backend.model.config.vocab_size)
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(3))
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([render_prompt(tiny_backend.tokenizer, prompt, chat=True)])
        with torch.no_grad():
            expected = torch.log_softmax(tiny_backend.model(input_ids=ids).logits[0, -1], -1)
        torch.testing.assert_close(logprobs[i], expected, atol=1e-4, rtol=1e-4)


def test_rope_override_changes_the_live_inv_freq(tiny_model_dir, tiny_backend):
    head_dim = 2 * rotary_inv_freq(tiny_backend.model).numel()
    torch.testing.assert_close(rotary_inv_freq(tiny_backend.model).double(), base_inv_freq(500.0, head_dim))
    raised = load_backend(str(tiny_model_dir), rope_theta=1e6)
    torch.testing.assert_close(rotary_inv_freq(raised.model).double(), base_inv_freq(1e6, head_dim))
    assert raised.rope["rope_theta"] == 1e6 and raised.describe()["rope"]["rope_theta"] == 1e6
    prompt = ["day 3 : the red fox paints two blue doors . " * 4]
    assert not torch.allclose(raised.next_token_logprobs(prompt), tiny_backend.next_token_logprobs(prompt))


def test_adapter_directory_loads_base_plus_adapter_with_its_rope_or_an_override(tiny_model_dir, toy_data, tmp_path):
    recipe = load_recipe("recipes/tiny-cpu.yaml", {
        "model.name": str(tiny_model_dir), "data.train_files": [str(toy_data)], "data.max_length": 384,
        "train.output_dir": str(tmp_path / "run"), "train.batch_size": 2, "train.micro_batch_size": 2,
        "train.max_steps": 1, "train.save_every": 0})
    train(recipe)
    trained = load_backend(str(tmp_path / "run"))
    head_dim = 2 * rotary_inv_freq(trained.model).numel()
    torch.testing.assert_close(rotary_inv_freq(trained.model).double(), base_inv_freq(200000.0, head_dim))
    assert trained.max_length == 384  # training grew max_position_embeddings to its length
    assert type(trained.model).__name__ == "PeftModelForCausalLM"
    overridden = load_backend(str(tmp_path / "run" / "adapter"), rope_theta=3e6)
    torch.testing.assert_close(rotary_inv_freq(overridden.model).double(), base_inv_freq(3e6, head_dim))
    assert len(overridden.generate(["what is the number of anna ?"], 4)) == 1


@pytest.fixture
def served():
    server = FakeServer(answer=lambda _: "42")
    yield server
    server.close()


def test_openai_backend_sends_a_greedy_chat_request(served):
    backend = load_backend("served-model", backend="openai", base_url=served.url, max_length=1000)
    assert backend.generate(["what is the pass key?", "again"], max_new_tokens=7) == ["42", "42"]
    assert backend.generate(["raw text"], max_new_tokens=3, chat=False) == ["42"]
    (path, body), _, (raw_path, raw) = served.requests
    assert path.endswith("/chat/completions") and raw_path.endswith("/completions") and raw["prompt"] == "raw text"
    assert body["temperature"] == 0 and body["max_tokens"] == 7 and body["model"] == "served-model"
    assert body["messages"] == [{"role": "user", "content": "what is the pass key?"}]
    with pytest.raises(ValueError, match="tokenizer"):
        backend.prompt_length("x")
    with pytest.raises(ValueError, match="rope"):
        load_backend("served-model", backend="openai", rope_theta=1e6, base_url=served.url)


def test_every_openai_client_reads_its_key_from_the_named_variable_and_has_one_default(served, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError, match="TENFOLD_TEST_KEY"):  # OpenAI's own API without a key
        openai_client(api_key_env="TENFOLD_TEST_KEY")
    load_backend("m", backend="openai", base_url=served.url).generate(["q"], 2)  # a local server: the default
    monkeypatch.setenv("OPENAI_BASE_URL", served.url)
    monkeypatch.setenv("TENFOLD_TEST_KEY", "sk-from-the-environment")
    load_backend("m", backend="openai", api_key_env="TENFOLD_TEST_KEY").generate(["q"], 2)
    assert served.authorizations == {f"Bearer {MISSING_KEY}", "Bearer sk-from-the-environment"}
    assert openai_client(api_key_env="TENFOLD_TEST_KEY", asynchronous=True).base_url == served.url + "/"


def test_a_length_beyond_free_memory_is_refused_before_any_work(tiny_backend, tmp_path):
    from tenfold.eval.needle import run_needle
    from tenfold.eval.runner import check_length

    config = tiny_backend.model.config
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    assert tiny_backend.generation_bytes(1000) >= 1000 * kv_bytes  # the KV cache alone
    assert tiny_backend.generation_bytes(2000) > tiny_backend.generation_bytes(1000)
    too_long = 2 * tiny_backend.free_bytes() // kv_bytes
    saved = tiny_backend.max_length
    tiny_backend.max_length = 10 * too_long  # the configured length would allow it; memory does not
    try:
        with pytest.raises(ValueError, match="GiB are free"):
            check_length(tiny_backend, "needle", too_long, 50)
        with pytest.raises(ValueError, match="GiB are free"):
            run_needle(tiny_backend, tmp_path / "needle", lengths=[too_long], depths=[0])
    finally:
        tiny_backend.max_length = saved
    assert not (tmp_path / "needle" / "needle.predictions.jsonl").exists()  # refused before any work
