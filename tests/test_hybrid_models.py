"""Hybrid targets (recurrent + attention layers): the tiny Qwen3.5 (Gated DeltaNet + gated
attention, with one MTP block) and LFM2 (short convolutions + attention) models of gguf_arch load
and decode greedily; Mamba-2 (recurrent only) too.

The last assertion of each test pins what the engine does with these targets TODAY: a draft
tree needs attention-only memory, so mode "tree" is refused. Change it when hybrid speculation
lands.
"""
import pytest

import gguf_arch
from gguf_factory import read_weights
from heterospec import Engine

PROMPT = "the value is"
N = 24


def greedy(e: Engine, prompt: str = PROMPT) -> list[int]:
    r = e.generate(prompt, max_tokens=N, temperature=0, mode="ar")
    assert r.finish_reason == "length" and len(r.tokens) == N, (r.finish_reason, r.tokens)
    return list(r.tokens)


def check_plain_decoding(e: Engine) -> list[int]:
    toks = greedy(e)
    assert toks == greedy(e)                                  # deterministic
    assert not any(e.is_eog(t) for t in toks)                 # no end-of-generation
    assert len(set(toks)) >= N // 2, toks                     # varied, not one token repeated
    assert greedy(e, "hello world") != toks                   # context-dependent
    return toks


def test_qwen35_hybrid_with_mtp_layer(tmp_path):
    path = gguf_arch.write_qwen35(tmp_path / "q35.gguf", nextn=1)
    W = read_weights(path)                                    # trunk blk.0-3, MTP block blk.4
    assert {"blk.4.nextn.eh_proj.weight", "blk.4.nextn.enorm.weight", "blk.4.nextn.hnorm.weight",
            "blk.4.attn_q.weight"} <= set(W) and not any(k.startswith("blk.5.") for k in W)
    with Engine(path, n_threads=1, n_ctx=512) as e:          # load_mtp=false: nextn tensors skipped
        assert e.description.startswith("qwen35")
        toks = check_plain_decoding(e)
        # trees run path by path over its recurrent state (test_hybrid_speculation.py checks them)
        assert e.generate(PROMPT, max_tokens=4, temperature=0, mode="tree").tokens == toks[:4]
    # the MTP block is not part of the trunk: without it the model decodes the same
    with Engine(gguf_arch.write_qwen35(tmp_path / "q35-no-mtp.gguf", nextn=0), n_threads=1, n_ctx=512) as e:
        assert greedy(e) == toks


def test_lfm2_hybrid(tmp_path):
    path = gguf_arch.write_lfm2(tmp_path / "lfm2.gguf")
    with Engine(path, n_threads=1, n_ctx=512) as e:
        assert e.description.startswith("lfm2")
        check_plain_decoding(e)
        toks = greedy(e)
        assert e.generate(PROMPT, max_tokens=4, temperature=0, mode="tree").tokens == toks[:4]


def test_mamba2_recurrent(tmp_path):
    with Engine(gguf_arch.write_mamba2(tmp_path / "mamba2.gguf"), n_threads=1, n_ctx=512) as e:
        assert e.description.startswith("mamba2")
        check_plain_decoding(e)
        # no rollback at this pin: chains over host checkpoints, no trees
        with pytest.raises(ValueError, match="recurrent"):
            e.generate(PROMPT, max_tokens=4, temperature=0, mode="tree")
