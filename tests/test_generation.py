import copy
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from tokenizers import processors

from fake_openai import FakeServer
from fakes import FakeBackend
from tenfold.errors import UserError
from tenfold.eval.runner import claim_predictions, run_cases
from tenfold.generation import (
    MISSING_KEY,
    GenerationControls,
    VLLMBackend,
    cut_at_stop,
    load_backend,
    openai_client,
    render_prompt,
    stop_token_ids,
)
from tenfold.recipe import load_recipe
from tenfold.rope import rotary_inv_freq
from tenfold.toy import build_tokenizer
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


@contextmanager
def biased_head(backend, biases: dict[int, float], weights: bool = True):
    """The backend's model with `biases` added to its logits (and, weights=False, nothing else)."""
    lm_head = backend.model.lm_head
    biased = torch.nn.Linear(lm_head.in_features, lm_head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(lm_head.weight if weights else torch.zeros_like(lm_head.weight))
        biased.bias.zero_()
        for token, bias in biases.items():
            biased.bias[token] = bias
    backend.model.lm_head = biased
    try:
        yield backend
    finally:
        backend.model.lm_head = lm_head


def test_generation_stops_at_end_of_text_though_the_eos_is_eot(tiny_backend):
    end_of_text = tiny_backend.tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    with biased_head(tiny_backend, {end_of_text: 100.0}, weights=False):  # it always says <|end_of_text|>
        assert tiny_backend.generate_ids(["what is the number of anna ?"], max_new_tokens=8) == [[end_of_text]]
        assert tiny_backend.generate(["what is the number of anna ?", "hi"], max_new_tokens=8) == ["", ""]
        # forbidden as the first token, it is the second
        controls = GenerationControls(suppress_first_end=True)
        (first, end), = tiny_backend.generate_ids(["what is the number of anna ?"], 8, controls=controls)
        assert first not in tiny_backend.stop_ids and end == end_of_text


PROMPTS = ["day 3 : the red fox paints two blue doors .", "hi", "what is the number of anna ?", "the green owl",
           "day 9 : the gold hen hides one cup . day 10 :", "x"]


def test_a_stop_string_cuts_the_output_exactly_where_cutting_the_uncontrolled_output_does(tiny_backend):
    tok = tiny_backend.tokenizer
    newline = tok.convert_tokens_to_ids("Ċ")
    with biased_head(tiny_backend, {newline: 0.24}):  # the random model now writes "\n" here and there
        free = tiny_backend.generate_ids(PROMPTS, 24)
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in free]
        assert sum(text.find("\n") > 0 for text in texts) >= 3  # the case: "\n" after a few tokens
        controls = GenerationControls(stop="\n")
        assert tiny_backend.generate(PROMPTS, 24, controls=controls) == [text.split("\n")[0] for text in texts]
        stopped = tiny_backend.generate_ids(PROMPTS, 24, controls=controls)
        for text, ids, cut in zip(texts, free, stopped):  # the ids up to the token that writes the "\n"
            assert cut == ids if "\n" not in text else cut == ids[:len(cut)] and "\n" in tok.decode(cut[-1:])
        steps = []  # generation itself stops there: one forward pass per token it made
        hook = tiny_backend.model.lm_head.register_forward_hook(lambda *_: steps.append(1))
        try:
            (cut,) = tiny_backend.generate_ids(PROMPTS[2:3], 24, controls=controls)
        finally:
            hook.remove()
        assert len(steps) == len(cut) < 24
    # stop strings that start or end inside a token, several at once
    texts = tiny_backend.generate(PROMPTS, 24)
    stop = (texts[0][5:8], texts[2][3:5], texts[4][9:12])
    assert tiny_backend.generate(PROMPTS, 24, controls=GenerationControls(stop=stop)) == \
        [cut_at_stop(text, stop) for text in texts] != texts


def test_first_token_suppression_bans_a_token_at_the_first_position_only(tiny_backend):
    tok = tiny_backend.tokenizer
    free = tiny_backend.generate_ids(PROMPTS, 8)
    greedy_first = free[1][0]  # X, the first token of "hi"'s answer
    assert greedy_first in free[1][1:]  # and a later one too
    controls = GenerationControls(suppress_first=tok.decode([greedy_first]))
    banned = tiny_backend.first_token_ban(controls)
    assert greedy_first in banned and not set(banned) & set(tiny_backend.stop_ids)
    held = tiny_backend.generate_ids(PROMPTS, 8, controls=controls)
    logprobs = tiny_backend.next_token_logprobs(PROMPTS)
    logprobs[:, banned] = -float("inf")
    assert [row[0] for row in held] == logprobs.argmax(-1).tolist()  # the best token that is not banned
    for before, after in zip(free, held):
        assert after[0] not in banned and (after == before) == (before[0] not in banned)
    assert any(token in banned for row in held for token in row[1:])  # later tokens may be X again
    with pytest.raises(ValueError, match="reads"):
        tiny_backend.first_token_ban(GenerationControls(suppress_first="no token reads this"))


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


def fake_vllm(tiny_model_dir):
    """The part of vLLM's offline API that VLLMBackend uses, as vLLM documents it, over transformers: greedy,
    one token at a time; `logit_bias` added to the logits; a stop token kept in token_ids, a stop string in
    token_ids but left out of text. It checks the backend's use of that API, not vLLM itself."""
    from transformers import AutoModelForCausalLM

    from tenfold.models import load_tokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), load_tokenizer(str(tiny_model_dir))

    def generate(prompts, params, use_tqdm=False):  # noqa: ARG001
        outputs = []
        for prompt in prompts:
            ids, new, stop = prompt["prompt_token_ids"], [], params.stop or []
            while len(new) < params.max_tokens:
                with torch.no_grad():
                    logits = model(torch.tensor([ids + new])).logits[0, -1]
                for token, bias in (params.logit_bias or {}).items():
                    logits[token] += bias
                new.append(int(logits.argmax()))
                text = tok.decode(new, skip_special_tokens=True)
                if new[-1] in (params.stop_token_ids or []) or any(s in text for s in stop):
                    break
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(text=cut_at_stop(text, tuple(stop)),
                                                                    token_ids=tuple(new))]))
        return outputs

    def llm(model, tokenizer, max_model_len, hf_overrides):  # noqa: ARG001 (what VLLMBackend passes)
        config = SimpleNamespace(max_model_len=max_model_len or 256)
        return SimpleNamespace(generate=generate, llm_engine=SimpleNamespace(model_config=config))

    defaults = dict(stop=None, stop_token_ids=None, logit_bias=None)
    return SimpleNamespace(LLM=llm, SamplingParams=lambda **kw: SimpleNamespace(**{**defaults, **kw}),
                           TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids})


def test_vllm_backend_applies_the_controls_as_the_transformers_backend_does(tiny_model_dir, tiny_backend,
                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(tiny_model_dir))
    vllm, prompts = VLLMBackend(str(tiny_model_dir)), PROMPTS[:4]
    texts = tiny_backend.generate(prompts, 10)
    first = tiny_backend.tokenizer.decode(tiny_backend.generate_ids(prompts[1:2], 1)[0])  # "hi"'s first token
    for controls in (None, GenerationControls(stop=(texts[0][5:8], texts[2][3:5])),
                     GenerationControls(suppress_first=first),
                     GenerationControls(stop=texts[1][4:6], suppress_first=first, suppress_first_end=True)):
        assert vllm.generate(prompts, 10, controls=controls) == tiny_backend.generate(prompts, 10, controls=controls)
    ends = GenerationControls(suppress_first_end=True)
    assert vllm.generate(prompts, 1, controls=ends) == tiny_backend.generate(prompts, 1, controls=ends)


def test_openai_backend_sends_stop_strings_and_refuses_a_first_token_ban(served):
    backend = load_backend("served-model", backend="openai", base_url=served.url)
    served.answer = lambda _: "first line\nsecond"  # a server that sends the stop string back
    assert backend.generate(["q"], 5, controls=GenerationControls(stop="\n")) == ["first line"]
    assert served.requests[-1][1]["stop"] == ["\n"]
    with pytest.raises(UserError, match="first token"):
        backend.generate(["q"], 5, controls=GenerationControls(suppress_first="\n"))
    with pytest.raises(UserError, match="first token"):
        backend.generate(["q"], 5, controls=GenerationControls(suppress_first_end=True))
    with pytest.raises(UserError, match="at most 4"):
        backend.generate(["q"], 5, controls=GenerationControls(stop=tuple("abcde")))
    assert len(served.requests) == 1  # refused before asking


def test_generation_controls_are_part_of_the_prediction_key(tmp_path):
    fake, path = FakeBackend(lambda prompt: prompt.upper()), tmp_path / "bench.predictions.jsonl"
    one_line = GenerationControls(stop="\n", suppress_first_end=True)
    key = claim_predictions(fake, path, {"controls": {"trec": one_line}})
    assert key["settings"]["controls"]["trec"] == {"stop": ["\n"], "stop_tokens": [], "suppress_first": [],
                                                   "suppress_first_end": True}
    run_cases(fake, [{"id": "a", "prompt": "x"}], path, 4, lambda *_: {}, controls=one_line)
    assert fake.calls[0]["controls"] == one_line
    claim_predictions(fake, path, {"controls": {"trec": one_line}})  # the same controls: it resumes
    with pytest.raises(ValueError, match="made otherwise.*suppress_first_end True -> False"):
        claim_predictions(fake, path, {"controls": {"trec": GenerationControls(stop="\n")}})
    with pytest.raises(ValueError, match="non-empty strings"):
        GenerationControls(stop=["\n", ""])


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


def test_a_stop_token_ends_the_answer_at_that_token_kept_as_the_papers_eos_list_does(tiny_backend):
    tok = tiny_backend.tokenizer
    newline = tok.convert_tokens_to_ids("Ċ")
    controls = GenerationControls(stop_tokens="\n")
    assert tiny_backend.stop_ids_for(controls) == sorted({*tiny_backend.stop_ids, newline})
    with biased_head(tiny_backend, {newline: 0.24}):  # the random model now writes "\n" here and there
        free = tiny_backend.generate_ids(PROMPTS, 24)
        assert sum(newline in ids[1:] for ids in free) >= 3
        stopped = tiny_backend.generate_ids(PROMPTS, 24, controls=controls)
        assert stopped == [ids[:ids.index(newline) + 1] if newline in ids else ids for ids in free]
        texts = tiny_backend.generate(PROMPTS, 24, controls=controls)
        assert [text.endswith("\n") for text in texts] == [newline in ids for ids in free]  # the "\n" is kept


def test_a_stop_token_is_that_token_only_not_a_longer_one_holding_it(tmp_path):
    tok = build_tokenizer(["a\n\n", "b\nc"] * 50, vocab_size=300)  # a text ending in "\n\n" learns that token
    double = tok.convert_tokens_to_ids("ĊĊ")
    assert double != tok.unk_token_id and tok.decode([double]) == "\n\n"  # the case: "\n\n" is one token
    fake = FakeBackend(lambda prompt: prompt, tokenizer=tok)
    fake.stop_ids = [tok.eos_token_id]
    assert fake.stop_ids_for(GenerationControls(stop_tokens="\n")) == sorted([tok.eos_token_id,
                                                                               tok.convert_tokens_to_ids("Ċ")])


def test_the_openai_backend_refuses_stop_tokens_and_the_papers_chat_template(served):
    backend = load_backend("served-model", backend="openai", base_url=served.url)
    with pytest.raises(UserError, match="not at tokens"):
        backend.generate(["q"], 5, controls=GenerationControls(stop_tokens="\n"))
    with pytest.raises(UserError, match="server's template"):
        load_backend("served-model", backend="openai", base_url=served.url, chat_template="llama-3")


def test_the_papers_llama3_template_keeps_the_message_as_it_is_and_is_part_of_the_key(tiny_model_dir):
    own = load_backend(str(tiny_model_dir))
    paper = load_backend(str(tiny_model_dir), chat_template="llama-3")
    message = "  what is the number of anna ?\n"
    bos, header = "<|begin_of_text|>", "<|start_header_id|>user<|end_header_id|>\n\n"
    paper_text = paper.tokenizer.decode(render_prompt(paper.tokenizer, message, chat=True))
    # the BOS is the tokenizer's to add, as in the paper's code: Llama-3's adds one, this one (whose own
    # template writes it) none
    assert paper_text == header + message + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    own_text = own.tokenizer.decode(render_prompt(own.tokenizer, message, chat=True))
    assert own_text == bos + paper_text.replace(message, message.strip())  # Llama-3's own template trims it
    assert own.identity()["chat_template"] == "tokenizer" and paper.identity()["chat_template"] == "llama-3"
    with pytest.raises(UserError, match="unknown chat template"):
        load_backend(str(tiny_model_dir), chat_template="llama-2")


def test_longbench_pred_py_templates_give_the_prompt_as_its_tokenizer_call_does(tiny_model_dir):
    import typing

    from tenfold.eval import EvalSettings
    from tenfold.generation import CHAT_TEMPLATES, use_chat_template

    message = "  Read this . Answer:\n"
    for adds_bos in (False, True):  # tiny-llama's tokenizer adds no BOS; Llama's add one, as pred.py counts
        tok = load_backend(str(tiny_model_dir), chat_template="none").tokenizer
        if adds_bos:
            tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
                single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
        # pred.py for a model build_chat has no branch for: tokenizer(prompt), the prompt as it is
        assert render_prompt(tok, message, chat=True) == tok(message)["input_ids"] == render_prompt(tok, message, False)
        assert (render_prompt(tok, message, chat=True)[0] == tok.bos_token_id) == adds_bos
        use_chat_template(tok, "longbench-llama2")  # pred.py for llama2: f"[INST]{prompt}[/INST]"
        assert render_prompt(tok, message, chat=True) == tok(f"[INST]{message}[/INST]")["input_ids"]
    raw = load_backend(str(tiny_model_dir), chat_template="none")
    assert raw.identity()["chat_template"] == "none"  # part of the predictions' key
    assert raw.stop_ids == load_backend(str(tiny_model_dir)).stop_ids  # the end tokens are the model's still
    flag = typing.get_type_hints(EvalSettings)["chat_template"]  # --chat-template takes every choice
    assert typing.get_args(flag) == tuple(CHAT_TEMPLATES)
