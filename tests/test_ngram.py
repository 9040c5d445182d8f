"""Model-free (n-gram / suffix) and hybrid drafting: the suffix index, and exactness of both
drafters against plain decoding. Every exactness test also asserts that n-gram drafts were
verified and accepted: a test that never speculated would prove nothing."""
import pytest

from heterospec import Engine, _core
from conftest import shared_model
from test_heterospec import FLAT
from test_speculative import PROMPTS, check_greedy, chi2_threshold, first_diff, two_sample_chi2

T = _core.testing


# -- the suffix index (pure logic) -------------------------------------------------------------

def test_longest_match_and_its_most_recent_occurrences():
    ix = T.SuffixIndex()
    ix.push([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 3, 4])   # context ends ... 3 4
    n, starts = ix.match()
    assert n == 2 and starts == [9, 4]                  # "3 4" then 6 (most recent) and 5
    ix.push([2, 3])
    # ... 3 4 2 3: no earlier "4 2 3"; "2 3" occurred twice, followed by 4 both times
    n, starts = ix.match()
    assert n == 2 and starts == [8, 3]
    ix.push([4])
    n, starts = ix.match()                              # "2 3 4" twice: "9 2 3 4" and "1 2 3 4"
    assert n == 3 and starts == [9, 4]
    assert ix.trie([9], 3) == [(-1, -1, 1), (6, 0, 1), (7, 1, 1), (3, 2, 1)]


def test_the_trie_merges_continuations_with_counts():
    ix = T.SuffixIndex()
    ix.push([7, 1, 2, 8, 7, 1, 3, 9, 7, 1, 2, 5, 7])   # "7" three times before, then 1 2 / 1 3 / 1 2
    n, starts = ix.match()
    assert n == 1 and starts == [9, 5, 1]
    trie = ix.trie(starts, 2)
    assert trie[0] == (-1, -1, 3)
    by_path = {(t, trie[p][0]): c for t, p, c in trie[1:]}
    assert by_path[(1, -1)] == 3                         # all three went on with 1
    assert by_path[(2, 1)] == 2 and by_path[(3, 1)] == 1  # then two ways: counts 2 and 1


def test_matches_never_cross_documents_and_earlier_documents_are_remembered():
    ix = T.SuffixIndex()
    ix.push([5, 6, 7, 8])
    ix.begin_document()
    ix.push([6, 7])
    n, starts = ix.match()
    assert n == 2 and starts == [3]                     # the earlier request's "6 7" -> 8
    ix.begin_document()
    ix.push([8])                                        # 8 ended a document: nothing followed it
    assert ix.match() == (0, [])
    ix.begin_document()
    assert ix.match() == (0, [])                        # an empty document matches nothing


def test_memory_is_bounded_and_indexing_linear():
    ix = T.SuffixIndex(capacity=1000)
    ix.push(list(range(200)) * 20)                      # 4000 tokens: the oldest are forgotten
    assert len(ix) <= 1000
    n, starts = ix.match()
    assert n == 32 and starts and all(0 <= s < len(ix) for s in starts)   # still matches
    big = T.SuffixIndex()                               # the default: 256K tokens
    big.push([i % 5000 for i in range(600_000)])        # a huge prompt: bounded, no quadratic work
    assert len(big) <= 1 << 18
    assert big.match(4, 64)[0] == 32


def test_merging_keeps_one_node_per_token_and_marks_both_sources():
    t = T.DraftTree()
    t.reset(0)
    a = t.add_or_merge(0, 5, 0.6, 1)                    # the model proposes 5
    b = t.add_or_merge(0, 5, 0.3, 2)                    # the n-gram too: the same node
    c = t.add_or_merge(0, 6, 0.3, 2)
    assert a == b and c != a and len(t) == 3
    assert t.source(a) == 3 and t.source(c) == 2 and t.node(a)[3] == pytest.approx(0.6)
    t.reset(0)                                          # a new step's tree: nothing to merge with
    assert t.add_or_merge(0, 5, 0.3, 2) == 1 and len(t) == 2 and t.source(1) == 2


# -- exactness on the suite's tiny models --------------------------------------------------------

@pytest.fixture(scope="module")
def flat_engines(tiny):
    """The tiny target alone (n-gram drafts) and with its draft (hybrid), with a flat projected
    profile so that the cost-aware mode speculates the same way on every machine."""
    with Engine(tiny.target, n_threads=2) as alone, Engine(tiny.target, draft=tiny.draft, n_threads=2) as pair:
        for e in (alone, pair):
            e._engine.set_cost_profile(*FLAT, projected=True)
            e._profile_ready = True
        yield alone, pair


REPEATS = [p + " " + p for p in PROMPTS]   # prompts that repeat themselves: something to copy


def test_no_draft_model_means_ngram_speculation_by_default(flat_engines):
    alone, pair = flat_engines
    r = alone.generate(REPEATS[0], max_tokens=8, temperature=0)
    assert (r.stats.mode, r.stats.drafter) == ("heterospec", "ngram")
    assert pair.generate("hello", max_tokens=4, temperature=0).stats.drafter == "hybrid"


@pytest.mark.parametrize("shape", [dict(mode="heterospec"), dict(mode="tree", depth=6, budget=12),
                                   dict(mode="chain", n_max=5), dict(mode="heterospec", cost_aware=False)],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("drafter", ["ngram", "hybrid"])
def test_greedy_equals_plain_decoding(tiny, flat_engines, drafter, shape):
    engine = flat_engines[0] if drafter == "ngram" else flat_engines[1]
    ties, verified, from_ngram = 0, 0, 0
    for prompt in REPEATS:
        ids = engine.tokenize(prompt, parse_special=True)
        ref = engine.generate(ids, max_tokens=40, temperature=0, mode="ar")
        got = engine.generate(ids, max_tokens=40, temperature=0, drafter=drafter, **shape)
        assert got.stats.drafter == drafter
        ties += check_greedy(engine, tiny.target, ids, got, ref, f"{drafter} {shape} {prompt!r}") == "tie"
        verified += got.stats.nodes_verified
        from_ngram += got.stats.accepted_ngram
    assert ties <= 2
    assert verified > 100 and from_ngram > 20, (verified, from_ngram)


def test_hybrid_trees_hold_both_sources(flat_engines):
    pair = flat_engines[1]
    model = ngram = 0
    for prompt in REPEATS:
        s = pair.generate(prompt, max_tokens=40, temperature=0, drafter="hybrid", mode="tree", depth=4,
                          budget=16).stats
        model += s.accepted_model
        ngram += s.accepted_ngram
    assert model > 20 and ngram > 20, (model, ngram)


def test_sampling_with_ngram_trees_matches_plain_sampling(flat_engines):
    engine = flat_engines[0]
    prompt = engine.tokenize("the value is the value is the value", parse_special=True)
    draws, verified = {}, 0
    for mode, seed0 in (("ar", 0), ("heterospec", 10**6)):
        out = []
        for i in range(1200):
            p = engine._params(max_tokens=3, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=seed0 + i,
                               mode=mode)
            r = engine._engine.generate(prompt, p)
            out.append(tuple(r.tokens[1:3]))
            verified += r.stats.nodes_verified
        draws[mode] = out
    # the earlier requests give the index many sampled continuations: trees of several branches
    assert verified > 1200, verified
    stat, df = two_sample_chi2(draws["ar"], draws["heterospec"])
    assert stat < chi2_threshold(df), (stat, df)


def test_ends_and_stop_strings_inside_accepted_ngram_runs(tiny):
    """A request seen before is drafted whole from the engine's memory: its end of generation,
    a stop string or max_tokens then falls inside an accepted n-gram run."""
    with Engine(tiny.eos, n_threads=2) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        inside = 0
        for prompt in PROMPTS:
            ref = e.generate(prompt, max_tokens=80, temperature=0, mode="ar")
            got = e.generate(prompt, max_tokens=80, temperature=0)          # the second time: copied
            assert (got.tokens, got.text, got.finish_reason) == (ref.tokens, ref.text, ref.finish_reason)
            if ref.finish_reason == "stop" and got.stats.steps < len(ref.tokens) + 1:
                inside += 1
                assert got.stats.accepted_ngram > 0
            # a stop string in the middle of the text (ASCII: the tiny vocabulary's bytes can be partial)
            stop = next((ref.text[i:i + 2] for i in range(2, len(ref.text) - 1)
                         if ref.text[i:i + 2].isascii() and ref.text[i:i + 2].isalpha()), None)
            if stop:
                r1 = e.generate(prompt, max_tokens=80, temperature=0, mode="ar", stop=[stop])
                r2 = e.generate(prompt, max_tokens=80, temperature=0, stop=[stop])
                assert (r2.text, r2.finish_reason) == (r1.text, r1.finish_reason) and stop not in r2.text
                assert r2.stats.accepted_ngram > 0
            if ref.tokens:
                n = max(1, len(ref.tokens) // 2)
                r3 = e.generate(prompt, max_tokens=n, temperature=0)
                assert r3.tokens == ref.tokens[:n] and r3.finish_reason == "length"
                if n > 2:
                    assert r3.stats.steps < n   # max_tokens was reached inside an accepted run
        assert inside >= 2


def test_earlier_requests_are_remembered_until_cleared(flat_engines):
    engine = flat_engines[0]
    prompt = PROMPTS[1]
    engine.clear_ngram_memory()
    fresh = engine.generate(prompt, max_tokens=40, temperature=0).stats.accepted_ngram
    again = engine.generate(prompt, max_tokens=40, temperature=0).stats.accepted_ngram
    engine.clear_ngram_memory()
    cleared = engine.generate(prompt, max_tokens=40, temperature=0).stats.accepted_ngram
    assert again > fresh and cleared == fresh, (fresh, again, cleared)   # the repeat was copied


def test_context_limit_with_ngram_drafts(tiny):
    """Drafts are cut where the context ends: the output runs to the last position exactly as
    plain decoding does, and the caches stay consistent."""
    with Engine(tiny.target, n_ctx=48, n_threads=1) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        prompt = e.tokenize("the value is None the value is None the value", add_special=True)
        for shape in (dict(), dict(mode="tree", depth=8, budget=16), dict(mode="chain", n_max=8)):
            ref = e.generate(prompt, max_tokens=-1, temperature=0, ignore_eos=True, mode="ar")
            got = e.generate(prompt, max_tokens=-1, temperature=0, ignore_eos=True, **shape)
            assert got.tokens == ref.tokens and got.finish_reason == ref.finish_reason == "length"
            assert len(prompt) + len(got.tokens) == e.n_ctx + 1
            assert got.stats.nodes_verified > 0
            # a prompt one short of the context: room for the root only
            full = (prompt * 8)[:e.n_ctx - 1]
            assert e.generate(full, max_tokens=-1, temperature=0, ignore_eos=True, **shape).tokens == \
                e.generate(full, max_tokens=-1, temperature=0, ignore_eos=True, mode="ar").tokens


# -- the real model ------------------------------------------------------------------------------

CODE_EDIT = ("Add a docstring to this function and return the whole function.\n\n```python\n"
             "def clamp(value, low, high):\n    if value < low:\n        return low\n"
             "    if value > high:\n        return high\n    return value\n```")
RAG = ("Answer from the document.\n\nDocument: The Nile is a river in north-eastern Africa. It flows "
       "into the Mediterranean Sea. The Nile is about 6,650 km long and is the longest river in "
       "Africa.\n\nQuestion: How long is the Nile and where does it flow?")


def batch_noise(path, ids, n, n_ctx, every=4):
    """How far llama.cpp's own kernels move a position's top-two logit gap between its one-token
    loop and a batched pass over the same text: the largest change over every `every`-th of n
    positions (a flip of the top token counts both gaps)."""
    toks, gaps = _core.testing.llama_cpp_greedy(str(path), ids, n, n_ctx, 2)
    worst = 0.0
    for k in range(0, len(toks), every):   # fewer than n where generation ended
        t, g = _core.testing.llama_cpp_greedy(str(path), list(ids) + list(toks[:k]), 1, n_ctx, 2)
        worst = max(worst, abs(gaps[k] - g[0]) if t[0] == toks[k] else gaps[k] + g[0])
    return worst


def test_ngram_speculation_on_smollm2_is_exact():
    """SmolLM2 Q4_1 on CPU: llama.cpp's logits of a position move by tenths between a one-token
    pass and a batched one (measured here), so greedy outputs may part where plain decoding's
    top-two gap is within that noise; every parting point must be such a point."""
    path = shared_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    with Engine(path, n_ctx=2048, n_threads=2) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        # llama.cpp's built-in chatml: the prompts the noise bound below was calibrated on
        first = e.tokenize(e.format_chat([{"role": "user", "content": CODE_EDIT}], chat_template="chatml"), parse_special=True)
        tie = max(1e-2, 2 * batch_noise(path, first, 48, e.n_ctx))
        assert tie < 2.0, tie   # llama.cpp's noise, not a wrong engine
        parted, accepted = 0, 0
        for content in (CODE_EDIT, RAG, "Repeat exactly: the quick brown fox jumps over the lazy dog."):
            ids = e.tokenize(e.format_chat([{"role": "user", "content": content}], chat_template="chatml"), parse_special=True)
            ref = e.generate(ids, max_tokens=64, temperature=0, mode="ar")
            for shape in (dict(), dict(mode="tree", depth=8, budget=16)):
                e.clear_ngram_memory()   # no copying of the plain run's output
                got = e.generate(ids, max_tokens=64, temperature=0, **shape)
                accepted += got.stats.accepted_ngram
                k = first_diff(got.tokens, ref.tokens)
                if k is None:
                    assert got.tokens == ref.tokens and got.text == ref.text
                    continue
                parted += 1
                _, gaps = _core.testing.llama_cpp_greedy(str(path), ids, k + 1, e.n_ctx, 2)
                assert gaps[k] < tie, f"{shape} {content[:30]!r}: parted at {k}, gap {gaps[k]} (noise {tie})"
        print(f"noise {tie:.3f}, parted {parted}, accepted {accepted}")
        assert parted <= 4 and accepted > 30, (parted, accepted)
