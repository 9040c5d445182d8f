"""SampleAttention sparse prefill (the llama.cpp patch in third_party/patches/): its options,
its equivalence to dense attention when it keeps everything, its selection, and speculation's
exactness under it."""
import json
import subprocess
import sys

import numpy as np
import pytest

import gguf_factory as factory
from heterospec import Engine, _core
from test_heterospec import FLAT

AVAILABLE = _core.build_info()["sparse_prefill"]
needs_patch = pytest.mark.skipif(not AVAILABLE, reason="llama.cpp was built without HeteroSpec's sparse prefill patch")

# grouped-query attention (4 query heads on 2 KV heads), a context long enough for several ubatches
COMMON = dict(n_ctx=2048, n_batch=128, n_threads=1, flash_attn="on")
# the prompt's last 128 tokens dense: the split between sparse and dense runs in every test
SPARSE = dict(sparse_prefill="sample", sparse_min_ctx=0, sparse_window_frac=0.05, sparse_row_frac=0.1,
              sparse_dense_tail=128)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    target = factory.write_llama(root / "gqa.gguf", seed=7, n_head=4, n_head_kv=2, n_ctx_train=2048)
    draft = factory.write_llama(root / "gqa-draft.gguf", base=target, noise=0.05, seed=8, n_head=4, n_head_kv=2,
                                n_ctx_train=2048)
    return target, draft


def long_prompt(engine, n=900):
    words = " ".join(f"w{i % 97} v{(i * 7) % 31}" for i in range(n))
    return engine.tokenize(words)[:n]


def dense_reference(model, n_predict):
    """The long prompt, dense attention's greedy continuation and its log-probability rows."""
    with Engine(model, **COMMON) as dense:
        ids = long_prompt(dense)
        cont = dense.generate(ids, max_tokens=n_predict, temperature=0, mode="ar").tokens
        return ids, cont, dense.score(ids, cont)[0]


def mean_kl(ref, rows):
    return float((np.exp(ref.astype(np.float64)) * (ref - rows)).sum(axis=1).mean())


@pytest.mark.parametrize("opts,words", [
    (dict(sparse_prefill="dense"), "sparse_prefill"),
    (dict(sparse_alpha=0.0), "sparse_alpha"), (dict(sparse_alpha=1.5), "sparse_alpha"),
    (dict(sparse_alpha=float("nan")), "sparse_alpha"),
    (dict(sparse_row_frac=0.0), "sparse_row_frac"), (dict(sparse_row_frac=2.0), "sparse_row_frac"),
    (dict(sparse_window_frac=-0.1), "sparse_window_frac"), (dict(sparse_k_max=0.0), "sparse_k_max"),
    (dict(sparse_k_max=1.01), "sparse_k_max"),
])
def test_bad_parameters_are_value_errors(tiny, opts, words):
    with pytest.raises(ValueError, match=words):
        Engine(tiny.target, **opts)


def test_negative_lengths_and_no_flash_attention_are_value_errors(tiny):
    with pytest.raises(ValueError, match="sparse_min_ctx"):
        Engine(tiny.target, sparse_min_ctx=-1)
    with pytest.raises(ValueError, match="sparse_dense_tail"):
        Engine(tiny.target, sparse_dense_tail=-1)
    with pytest.raises(ValueError, match="flash attention"):
        Engine(tiny.target, sparse_prefill="sample", flash_attn="off")


@pytest.mark.skipif(AVAILABLE, reason="this build has the patch")
def test_without_the_patch_it_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="unavailable"):
        Engine(tiny.target, sparse_prefill="sample")


@needs_patch
def test_prompts_shorter_than_the_minimum_run_dense(gqa):
    with Engine(gqa[0], **COMMON) as dense, Engine(gqa[0], **COMMON, **{**SPARSE, "sparse_min_ctx": 4096}) as sparse:
        ids = long_prompt(dense)
        a = dense.generate(ids, max_tokens=16, temperature=0, mode="ar")
        b = sparse.generate(ids, max_tokens=16, temperature=0, mode="ar")
        assert b.stats.sparse_columns == 0 and b.stats.sparse_kept_fraction == 1.0
        assert a.tokens == b.tokens


@needs_patch
def test_the_prompts_tail_runs_dense(gqa):
    ids, cont, rows_d = dense_reference(gqa[0], 8)
    columns, kl = {}, {}
    for tail in (0, 128, 512, len(ids)):
        with Engine(gqa[0], **COMMON, **{**SPARSE, "sparse_dense_tail": tail}) as e:
            rows, st = e.score(ids, cont)
            columns[tail] = st.sparse_columns
            kl[tail] = mean_kl(rows_d, rows)
    # fewer ubatches run sparse as the tail grows; a tail as long as the prompt is all dense
    assert columns[0] > columns[128] > columns[512] > 0 and columns[len(ids)] == 0, columns
    assert kl[len(ids)] < 1e-3 and kl[512] < kl[0], kl


@needs_patch
def test_keeping_every_column_equals_dense_attention(gqa):
    # alpha = 1 and k_max = 100%: the sparse branch gathers every column (in score order)
    with Engine(gqa[0], **COMMON) as dense, \
            Engine(gqa[0], **COMMON, **{**SPARSE, "sparse_dense_tail": 0}, sparse_alpha=1.0, sparse_k_max=1.0) as sparse:
        ids = long_prompt(dense)
        cont = dense.generate(ids, max_tokens=12, temperature=0, mode="ar").tokens
        rows_d, _ = dense.score(ids, cont)
        rows_s, st = sparse.score(ids, cont)
        assert st.sparse_columns > 0 and st.sparse_kept_fraction == 1.0   # the sparse branch ran, kept all
        # as close as llama.cpp's kernels get: the sparse engine also runs the prompt's last token
        # apart (as speculation does; no other dense tail here, which would split the batches
        # elsewhere too), and CPU flash attention rounds Q to F16 per batch shape;
        # a wrong gather or mask would move log-probabilities by whole units
        assert np.abs(rows_d - rows_s).max() < 1e-2
        assert sparse.generate(ids, max_tokens=12, temperature=0, mode="ar").tokens == cont


@needs_patch
def test_scoring_on_the_cached_prompt_equals_scoring_cold(gqa):
    # eval-prefill scores continuations on the KV its timed runs left: that must be the same KV
    with Engine(gqa[0], **COMMON, **SPARSE, sparse_alpha=0.9, sparse_k_max=0.2) as e:
        ids = long_prompt(e)
        cont = e.generate(ids, max_tokens=12, temperature=0, mode="ar", cache_prompt=False).tokens
        warm, st = e.score(ids, cont, cache_prompt=True)
        assert st.cached_tokens == len(ids) - 1 and st.sparse_columns == 0   # only the last token ran
        cold, st = e.score(ids, cont)
        assert st.cached_tokens == 0 and st.sparse_columns > 0
        assert np.array_equal(warm, cold)


@needs_patch
def test_sparse_prefill_switches_per_call_as_a_dedicated_engine_would(gqa):
    # eval-prefill runs dense and sparse on one engine: each call must equal that engine's twin
    opts = {**SPARSE, "sparse_alpha": 0.9, "sparse_k_max": 0.2}
    off = {k: v for k, v in opts.items() if k != "sparse_prefill"}
    with Engine(gqa[0], **COMMON, **opts) as sparse, Engine(gqa[0], **COMMON) as dense, \
            Engine(gqa[0], **COMMON, **off) as switched:
        ids = long_prompt(dense)
        want = {"sample": sparse.generate(ids, max_tokens=12, temperature=0, mode="ar"),
                "off": dense.generate(ids, max_tokens=12, temperature=0, mode="ar")}
        assert want["sample"].stats.sparse_columns > 0 and want["off"].stats.sparse_columns == 0
        for mode in ("sample", "off", "sample"):   # and back: nothing of one call stays for the next
            got = switched.generate(ids, max_tokens=12, temperature=0, mode="ar", cache_prompt=False,
                                    sparse_prefill=mode)
            assert got.tokens == want[mode].tokens, mode
            assert got.stats.sparse_kept_fraction == want[mode].stats.sparse_kept_fraction, mode
            assert got.stats.sparse_columns == want[mode].stats.sparse_columns, mode
        rows, st = switched.score(ids, want["off"].tokens, sparse_prefill="sample")
        assert np.array_equal(rows, sparse.score(ids, want["off"].tokens)[0]) and st.sparse_columns > 0
        plain = sparse.generate(ids, max_tokens=12, temperature=0, mode="ar", cache_prompt=False, sparse_prefill="off")
        assert plain.tokens == want["off"].tokens and plain.stats.sparse_columns == 0
        with pytest.raises(ValueError, match="sparse_prefill"):
            switched.generate(ids, max_tokens=2, sparse_prefill="dense")
        with pytest.raises(TypeError):
            switched.generate(ids, max_tokens=2, sparse_prefill=1)
    with Engine(gqa[0], **{**COMMON, "flash_attn": "off"}) as no_fa, pytest.raises(ValueError, match="flash"):
        no_fa.generate(ids, max_tokens=2, sparse_prefill="sample")


@needs_patch
def test_selection_keeps_the_window_and_the_columns_that_carry_the_mass(gqa):
    ids, cont, rows_d = dense_reference(gqa[0], 16)
    kl, kept = {}, {}
    for name, alpha in (("window only", 1e-4), ("cra", 0.9), ("all of k_max", 1.0)):
        with Engine(gqa[0], **COMMON, **SPARSE, sparse_alpha=alpha, sparse_k_max=0.3) as e:
            rows, st = e.score(ids, cont)
            assert st.sparse_columns > 0
            kl[name] = mean_kl(rows_d, rows)
            kept[name] = st.sparse_kept_fraction
    # the window alone is kept at the smallest alpha; CRA adds columns until alpha; k_max caps them
    assert kept["window only"] < kept["cra"] <= kept["all of k_max"] < 1.0, kept
    # the columns it adds are the heavy ones: they bring the distributions closer to dense
    assert kl["cra"] < kl["window only"] and kl["all of k_max"] < kl["window only"], kl


@needs_patch
@pytest.mark.parametrize("shape", [dict(mode="tree", drafter="model"), dict(mode="tree", drafter="hybrid"),
                                   dict(mode="chain", drafter="model"), dict(mode="heterospec", drafter="ngram")])
def test_speculation_equals_plain_decoding_under_the_same_sparse_prefill(gqa, shape):
    with Engine(gqa[0], draft=gqa[1], **COMMON, **SPARSE, sparse_alpha=0.9, sparse_k_max=0.2) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)   # a GPU-like cost curve: heterospec speculates
        e._profile_ready = True
        ids = long_prompt(e)
        plain = e.generate(ids, max_tokens=32, temperature=0, mode="ar", cache_prompt=False)
        e.clear_ngram_memory()
        spec = e.generate(ids, max_tokens=32, temperature=0, cache_prompt=False, **shape)
        assert plain.stats.sparse_columns > 0 and spec.stats.sparse_columns > 0
        assert plain.stats.sparse_kept_fraction < 1.0
        assert spec.stats.nodes_verified > 0
        assert spec.tokens == plain.tokens


@needs_patch
def test_speculative_sampling_matches_plain_sampling_under_the_same_sparse_prefill(gqa):
    from test_speculative import chi2_threshold, two_sample_chi2
    with Engine(gqa[0], draft=gqa[1], **COMMON, **SPARSE, sparse_alpha=0.9, sparse_k_max=0.2) as e:
        ids = long_prompt(e)
        first = e.generate(ids, max_tokens=1, mode="ar")   # the sparse prefill; every draw below reuses it
        assert first.stats.sparse_columns > 0 and first.stats.sparse_kept_fraction < 1.0
        draws, verified = {}, 0
        for mode, seed0 in (("ar", 0), ("tree", 10**6)):
            out = []
            for i in range(1200):
                r = e.generate(ids, max_tokens=3, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=seed0 + i,
                               mode=mode, depth=3, branching=2, width=2, budget=4)
                assert r.stats.cached_tokens == len(ids) - 1   # the same sparse KV of the prompt
                out.append(tuple(r.tokens[:3]))
                verified += r.stats.nodes_verified
            draws[mode] = out
        assert verified > 1200, verified
        stat, df = two_sample_chi2(draws["ar"], draws["tree"])
        assert stat < chi2_threshold(df), (stat, df)


@needs_patch
def test_eval_prefill_command_runs_end_to_end(gqa, tmp_path):
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "heterospec", "eval-prefill", "-m", str(gqa[0]), "-c", "1024",
                        "-b", "128", "-t", "1", "--lengths", "600", "900", "-n", "8", "--documents", "2", "--repeats", "2",
                        "--needle-depths", "0.5", "--sparse-min-ctx", "0", "--sparse-dense-tail", "128",
                        "--floor", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert [row["length"] for row in d["rows"]] == [600, 900]
    for row in d["rows"]:
        assert row["kl_mean"] >= -1e-6 and 0.0 <= row["top1_agreement"] <= 1.0 and row["kept_fraction"] < 1.0
        assert row["ttft_dense_ms"] > 0 and row["ttft_sparse_ms"] > 0
        assert row["floor_kl_mean"] >= -1e-6 and 0.0 <= row["floor_top1_agreement"] <= 1.0
    assert len(d["needle"]) == 2 and "TTFT dense" in r.stdout
