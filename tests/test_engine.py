"""Plain decoding end to end: loading, generation, sampling, stops, streaming, chat."""
import pytest

from conftest import TINY_PROMPTS
from heterospec import Engine, _core


def llama_cpp_greedy(engine: Engine, path, prompt: str, n: int):
    """llama.cpp's own greedy loop (examples/simple) on the same model and prompt."""
    tokens = engine.tokenize(prompt, add_special=True, parse_special=True)
    return _core.testing.llama_cpp_greedy(str(path), tokens, n, engine.n_ctx, 2)[0]


# -- loading and generating ------------------------------------------------------------------

def test_generate_on_a_tiny_model(tiny_engine):
    r = tiny_engine.generate("hello world", max_tokens=16, temperature=0, mode="ar")
    assert len(r.tokens) == 16 and r.finish_reason == "length"
    # (SPM detokenization drops the leading space of a standalone text; a continuation keeps it)
    assert r.text.lstrip() == tiny_engine.detokenize(r.tokens).lstrip()
    s = r.stats
    assert s.prompt_tokens == len(tiny_engine.tokenize("hello world", parse_special=True))
    assert s.generated_tokens == 16 and s.target_calls == 15
    assert s.tokens_per_second > 0 and s.prompt_ms > 0


def test_f16_model_and_token_prompt(tiny):
    with Engine(tiny.f16, n_threads=1, n_ctx=64) as e:
        ids = e.tokenize("hello", add_special=True)
        assert ids[0] == 1  # BOS added
        r = e.generate(ids, max_tokens=8, temperature=0)
        assert len(r.tokens) == 8


def test_generate_on_the_shared_code_model(code_engine):
    r = code_engine.generate("def fibonacci(n):", max_tokens=48, temperature=0)
    assert len(r.tokens) == 48
    assert r.text.strip()  # a real continuation, not an empty string


@pytest.mark.parametrize("prompt", TINY_PROMPTS)
def test_greedy_equals_llama_cpp_on_tiny_models(tiny, tiny_engine, prompt):
    ours = tiny_engine.generate(prompt, max_tokens=40, temperature=0, top_k=1)
    assert ours.tokens == llama_cpp_greedy(tiny_engine, tiny.target, prompt, 40)


def test_greedy_equals_llama_cpp_on_the_code_model(code_target, code_engine, code_prompts):
    """The default engine (speculating with n-gram drafts) against llama.cpp's own greedy loop,
    which runs the prompt as one batch: equal, or parted only at a near-tie (a top-two gap below
    1e-2 in llama.cpp's loop; the prompt's last token runs in another kernel there)."""
    from test_heterospec import FLAT
    parted, verified = 0, 0
    # a fixed GPU-like profile: the allocation speculates whatever this machine's load (issue #22)
    code_engine._engine.set_cost_profile(*FLAT, projected=True)
    code_engine._profile_ready = True
    try:
        outs = [(p, code_engine.generate(p, max_tokens=64, temperature=0)) for p in code_prompts[:8] + ["def fibonacci(n):"]]
    finally:
        code_engine._profile_ready = False
    for prompt, ours in outs:
        verified += ours.stats.nodes_verified
        tokens = code_engine.tokenize(prompt, add_special=True, parse_special=True)
        ref, gaps = _core.testing.llama_cpp_greedy(str(code_target), tokens, 64, code_engine.n_ctx, 2)
        k = next((i for i, (a, b) in enumerate(zip(ours.tokens, ref)) if a != b), None)
        if k is None:
            assert ours.tokens == list(ref), prompt[-80:]
            continue
        parted += 1
        assert gaps[k] < 1e-2, (prompt[-80:], k, gaps[k])
    assert parted <= 2 and verified > 0, (parted, verified)


def test_greedy_is_deterministic_and_ignores_the_seed(tiny_engine):
    a = tiny_engine.generate("the value", max_tokens=24, temperature=0, seed=1)
    b = tiny_engine.generate("the value", max_tokens=24, temperature=0, seed=2)
    assert a.tokens == b.tokens and a.text == b.text


def test_seeded_sampling_is_reproducible(tiny_engine):
    kw = dict(max_tokens=32, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = tiny_engine.generate("hello", seed=123, **kw)
    b = tiny_engine.generate("hello", seed=123, **kw)
    c = tiny_engine.generate("hello", seed=124, **kw)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    greedy = tiny_engine.generate("hello", max_tokens=32, temperature=0)
    assert a.tokens != greedy.tokens  # sampling really samples


# -- stopping ------------------------------------------------------------------------------------

def test_max_tokens(tiny_engine):
    for n in (1, 2, 7):
        r = tiny_engine.generate("hello", max_tokens=n, temperature=0, ignore_eos=True)
        assert len(r.tokens) == n and r.finish_reason == "length"
    r = tiny_engine.generate("hello", max_tokens=0)
    assert r.tokens == [] and r.text == "" and r.finish_reason == "length"


def test_stop_string_cuts_text_where_it_starts(code_engine):
    full = code_engine.generate("def fibonacci(n):", max_tokens=64, temperature=0)
    text = full.text
    stop = text[12:16]
    cut = text.index(stop)
    r = code_engine.generate("def fibonacci(n):", max_tokens=64, temperature=0, stop=[stop, "never-there"])
    assert r.finish_reason == "stop"
    assert r.text == text[:cut]
    # generation ended at the token that completed the stop string
    assert r.tokens == full.tokens[:len(r.tokens)]
    assert stop in code_engine.detokenize(r.tokens)
    assert stop not in code_engine.detokenize(r.tokens[:-1])


def test_end_of_generation_stops_and_is_not_emitted(tiny):
    with Engine(tiny.eos, n_threads=1) as e:
        stopped = [e.generate(p, max_tokens=64, temperature=0) for p in TINY_PROMPTS]
        ended = [r for r in stopped if r.finish_reason == "stop"]
        assert ended, "the eos-boosted model should end some generations"
        for r in ended:
            assert not any(e.is_eog(t) for t in r.tokens)
        # with ignore_eos the same prompt runs on to max_tokens
        i = stopped.index(ended[0])
        r = e.generate(TINY_PROMPTS[i], max_tokens=64, temperature=0, ignore_eos=True)
        assert len(r.tokens) == 64 and r.tokens[:len(ended[0].tokens)] == ended[0].tokens


def test_generation_runs_up_to_the_context_limit(tiny):
    with Engine(tiny.target, n_ctx=32, n_threads=1) as e:
        prompt = e.tokenize("hello world the value", add_special=True)
        r = e.generate(prompt, max_tokens=-1, temperature=0, ignore_eos=True)
        assert r.finish_reason == "length"
        # the last token is sampled from the logits at position n_ctx - 1
        assert len(prompt) + len(r.tokens) == e.n_ctx + 1
        ref = _core.testing.llama_cpp_greedy(str(tiny.target), prompt, 1000, e.n_ctx, 1)[0]
        assert r.tokens[:len(ref)] == ref
        # a prompt that fills the context exactly still yields one token
        full = (prompt * e.n_ctx)[:e.n_ctx]
        assert len(e.generate(full, max_tokens=-1, temperature=0, ignore_eos=True).tokens) == 1


# -- streaming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.9, seed=5),
                                dict(temperature=0, stop=["e"])])
def test_stream_yields_the_same_text_as_generate(tiny_engine, code_engine, kw):
    for engine, prompt in ((tiny_engine, "hello world"), (code_engine, "import os\n")):
        pieces = list(engine.stream(prompt, max_tokens=40, **kw))
        assert all(isinstance(p, str) and p for p in pieces)
        r = engine.generate(prompt, max_tokens=40, **kw)
        assert "".join(pieces) == r.text
        assert engine.last_result.tokens == r.tokens


def test_stream_can_be_abandoned(tiny_engine):
    it = tiny_engine.stream("hello", max_tokens=50, temperature=0)
    next(it)
    it.close()
    assert len(tiny_engine.generate("hello", max_tokens=5, temperature=0).tokens) == 5


# -- text and chat -------------------------------------------------------------------------------

def test_tokenize_detokenize_round_trip(tiny_engine, code_engine):
    for engine in (tiny_engine, code_engine):
        text = "def hello(self): return 'wörld' + str(42)"
        ids = engine.tokenize(text, add_special=False)
        assert engine.detokenize(ids) == text
        assert engine.tokenize(text.encode(), add_special=False) == ids


def test_special_tokens_parse_only_when_asked(tiny_engine):
    text = "<|im_start|>user"
    im_start = tiny_engine.tokenize(text, add_special=False, parse_special=True)[0]
    assert im_start not in tiny_engine.tokenize(text, add_special=False, parse_special=False)
    assert tiny_engine.detokenize([im_start], special=True) == "<|im_start|>"
    assert tiny_engine.detokenize([im_start], special=False) == ""


def test_chat_uses_the_template_in_the_gguf(tiny_engine):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    prompt = tiny_engine.format_chat(msgs)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert tiny_engine.format_chat(msgs, add_generation_prompt=False).endswith("Hello<|im_end|>\n")
    r = tiny_engine.chat(msgs, max_tokens=8, temperature=0)
    assert r.tokens == tiny_engine.generate(prompt, max_tokens=8, temperature=0).tokens
    assert "".join(tiny_engine.chat(msgs, max_tokens=8, temperature=0, stream=True)) == r.text
    # another built-in template by name
    llama3 = tiny_engine.format_chat(msgs, chat_template="llama3")
    assert "<|start_header_id|>user<|end_header_id|>" in llama3


def test_chat_with_a_model_without_template_falls_back_to_chatml(code_engine):
    prompt = code_engine.format_chat([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_engine_with_draft_loads_both(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        assert e.has_draft
        assert len(e.generate("hello", max_tokens=4, temperature=0).tokens) == 4
