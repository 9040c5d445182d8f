"""The prompt cache: the longest prefix shared with the previous call's text keeps its KV on the
target and the draft; outputs equal a cold start's."""
import pytest

from heterospec import Engine
from test_heterospec import FLAT

CHAT = [{"role": "user", "content": "tell me about the cat that sat on the mat"}]


def turns(engine, mode, **kw):
    """A first chat turn, then the second turn's prompt (history + reply + a new message)."""
    first = engine.chat(CHAT, max_tokens=24, temperature=0, mode=mode, **kw)
    history = CHAT + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "and the dog?"}]
    return engine.format_chat(history), first


@pytest.mark.parametrize("mode,drafter", [("ar", None), ("tree", "ngram"), ("tree", "model"), ("tree", "hybrid"),
                                          ("chain", "model"), ("heterospec", "hybrid")])
def test_second_turn_reuses_the_cache_and_equals_a_cold_start(tiny, mode, drafter):
    kw = dict(max_tokens=32, temperature=0, mode=mode, drafter=drafter)
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)   # a GPU-like cost curve: heterospec speculates
        e._profile_ready = True
        prompt, first = turns(e, mode, drafter=drafter)
        warm = e.generate(prompt, **kw)
        cold = e.generate(prompt, cache_prompt=False, **kw)
    # at least the first turn's prompt (its reply may tokenize otherwise as text than as generated)
    assert first.stats.prompt_tokens - 2 <= warm.stats.cached_tokens < warm.stats.prompt_tokens
    assert cold.stats.cached_tokens == 0
    assert warm.tokens == cold.tokens and warm.text == cold.text
    if mode != "ar":
        assert warm.stats.nodes_verified > 0 and cold.stats.nodes_verified > 0


def test_sampling_with_a_seed_equals_a_cold_start(tiny):
    kw = dict(max_tokens=40, temperature=0.9, seed=11, mode="tree")
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        prompt, _ = turns(e, "tree")
        warm = e.generate(prompt, **kw)
        cold = e.generate(prompt, cache_prompt=False, **kw)
    assert warm.stats.cached_tokens > 0 and warm.stats.nodes_verified > 0
    assert warm.tokens == cold.tokens


def test_the_same_prompt_again_reruns_only_its_last_token(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        a = e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="tree")
        b = e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="tree")
        assert b.stats.cached_tokens == b.stats.prompt_tokens - 1 and a.tokens == b.tokens
        c = e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="ar")   # across modes
        assert c.stats.cached_tokens == c.stats.prompt_tokens - 1 and c.tokens == a.tokens


def test_a_different_prompt_keeps_only_the_common_prefix(tiny):
    with Engine(tiny.target, n_threads=1) as e:
        e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="tree")
        p1 = e.tokenize("the cat sat on the mat")
        p2 = e.tokenize("the cat ran under the table")
        common = next(i for i, (x, y) in enumerate(zip(p1, p2)) if x != y)
        r = e.generate(p2, max_tokens=8, temperature=0, mode="tree")
        assert r.stats.cached_tokens == common
        assert r.tokens == e.generate(p2, max_tokens=8, temperature=0, mode="tree", cache_prompt=False).tokens


def test_kv_state_after_a_cached_start_is_the_prompt_only(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        e.generate("the cat sat on the mat", max_tokens=16, temperature=0, mode="tree")
        ids = e.tokenize("the cat sat on the mat and then")
        s = e.stream(ids, max_tokens=4, temperature=0, mode="tree")
        for seqs in e._engine.debug_kv_state():   # target, then draft: sequence 0 alone holds the prefix
            assert seqs[0] == (0, len(ids) - 2)
            assert all(p == (-1, -1) for p in seqs[1:])
        list(s)


def test_a_cancelled_generation_leaves_a_usable_cache(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        s = e.stream("the cat sat on the mat", max_tokens=40, temperature=0, mode="tree")
        next(s)
        s.close()
        r = e.generate("the cat sat on the mat", max_tokens=16, temperature=0, mode="tree")
        assert r.stats.cached_tokens > 0
        assert r.tokens == e.generate("the cat sat on the mat", max_tokens=16, temperature=0, mode="tree",
                                      cache_prompt=False).tokens


def test_switching_drafters_on_one_draft_context_keeps_the_cache_right(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        prompt = "the cat sat on the mat and looked at the"
        cold = e.generate(prompt, max_tokens=24, temperature=0, mode="tree", drafter="model", cache_prompt=False)
        for drafter in ("model", "hybrid", "model", "ngram", "hybrid"):
            r = e.generate(prompt, max_tokens=24, temperature=0, mode="tree", drafter=drafter)
            assert r.tokens == cold.tokens and r.stats.cached_tokens == r.stats.prompt_tokens - 1, drafter
            assert r.stats.nodes_verified > 0


def test_a_stop_inside_an_accepted_path_then_a_cached_turn(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        full = e.generate("the cat sat on", max_tokens=30, temperature=0, mode="tree")
        stop = full.text[len(full.text) // 2:][:3]   # ends generation mid-way, likely inside a step's path
        cut = e.generate("the cat sat on", max_tokens=30, temperature=0, mode="tree", stop=stop)
        assert cut.finish_reason == "stop" and cut.stats.nodes_verified > 0
        prompt = e.tokenize("the cat sat on") + cut.tokens + e.tokenize(" and then", add_special=False)
        warm = e.generate(prompt, max_tokens=16, temperature=0, mode="tree")
        assert warm.stats.cached_tokens > 0
        assert warm.tokens == e.generate(prompt, max_tokens=16, temperature=0, mode="tree", cache_prompt=False).tokens


def test_measuring_the_cost_profile_between_calls_starts_the_next_cold(tiny, tmp_path):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1, cost_profile_cache=tmp_path) as e:
        a = e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="tree")
        e.cost_profile()   # measures: it clears both caches
        b = e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="tree")
        assert b.stats.cached_tokens == 0 and b.tokens == a.tokens
        c = e.generate("the cat sat on the mat", max_tokens=8, temperature=0, mode="tree")
        assert c.stats.cached_tokens > 0 and c.tokens == a.tokens
