"""Pure-logic units (no model): sampler, UTF-8 handling, stop strings."""
import math

import numpy as np
import pytest

from heterospec import _core

T = _core.testing


def sampler(n_vocab=8, **kw):
    p = _core.SamplingParams()
    for k, v in kw.items():
        setattr(p, k, v)
    return T.Sampler(p, n_vocab)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


# -- sampler -----------------------------------------------------------------------------------

def test_greedy_is_argmax_with_ties_to_lower_id():
    s = sampler(temperature=0)
    logits = np.array([0.1, 2.0, -1, 2.0, 0.5, 0, 0, 0], dtype=np.float32)
    assert s.distribution(logits) == [(1, 1.0)]


def test_full_distribution_is_softmax_over_temperature():
    s = sampler(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0)
    logits = np.array([1.0, 2.0, 0.0, -1.0, 0.5, 0.25, 3.0, 0.0], dtype=np.float32)
    dist = s.distribution(logits)
    expect = softmax(logits.astype(np.float64) / 0.5)
    assert [t for t, _ in dist] == sorted(range(8), key=lambda i: (-logits[i], i))
    for t, p in dist:
        assert p == pytest.approx(expect[t], rel=1e-5)


def test_top_k_top_p_min_p_follow_llama_cpp_order():
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05, 1e-9, 1e-9, 1e-9], dtype=np.float64)).astype(np.float32)
    # top-k 3 keeps the three most likely, renormalised
    d = dict(sampler(temperature=1, top_k=3, top_p=1.0, min_p=0.0).distribution(logits))
    assert set(d) == {0, 1, 2}
    assert d[0] == pytest.approx(0.4 / 0.85, rel=1e-5)
    # top-p 0.7 keeps the smallest prefix whose mass reaches 0.7: tokens 0 and 1
    d = dict(sampler(temperature=1, top_k=0, top_p=0.7, min_p=0.0).distribution(logits))
    assert set(d) == {0, 1}
    # min-p 0.3 keeps p >= 0.3 * p_max = 0.12: tokens 0, 1, 2
    d = dict(sampler(temperature=1, top_k=0, top_p=1.0, min_p=0.3).distribution(logits))
    assert set(d) == {0, 1, 2}
    # top-p is judged before temperature: a high temperature flattens what is kept, not what is cut
    d = dict(sampler(temperature=5, top_k=0, top_p=0.7, min_p=0.0).distribution(logits))
    assert set(d) == {0, 1}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, -1.0, 1.0, 0.0], dtype=np.float32)
    s = sampler(n_vocab=4, temperature=1, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=2.0)
    d = dict(s.distribution(logits, history=[0, 1, 0]))
    expect = softmax(np.array([1.0, -2.0, 1.0, 0.0]))
    for t in range(4):
        assert d[t] == pytest.approx(expect[t], rel=1e-5)
    # repeat_last_n limits the look-back: only the last token (0) is penalised
    s = sampler(n_vocab=4, temperature=1, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=2.0, repeat_last_n=1)
    d = dict(s.distribution(logits, history=[1, 0]))
    expect = softmax(np.array([1.0, -1.0, 1.0, 0.0]))
    assert d[1] == pytest.approx(expect[1], rel=1e-5)
    # greedy sees the penalty too
    g = sampler(n_vocab=4, temperature=0, repeat_penalty=4.0)
    assert g.distribution(logits, history=[0]) == [(2, 1.0)]


def test_draws_follow_the_distribution_and_the_seed():
    dist = [(3, 0.5), (1, 0.3), (7, 0.2)]
    a, b = sampler(seed=42), sampler(seed=42)
    seq_a = [a.draw(dist) for _ in range(200)]
    assert seq_a == [b.draw(dist) for _ in range(200)]
    assert seq_a != [sampler(seed=43).draw(dist) for _ in range(200)]
    s = sampler(seed=7)
    n = 20000
    counts = {3: 0, 1: 0, 7: 0}
    for _ in range(n):
        counts[s.draw(dist)] += 1
    # chi-square with 2 degrees of freedom: 13.8 is the 0.1% critical value
    chi2 = sum((counts[t] - n * p) ** 2 / (n * p) for t, p in dist)
    assert chi2 < 13.8, counts


def test_random_seed_is_drawn_when_unset():
    assert sampler().seed != sampler().seed


# -- UTF-8 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expect", [
    (b"plain", "plain"),
    ("héllo €𝄞".encode(), "héllo €𝄞"),
    (b"a\xffb", "a\ufffdb"),
    (b"\xe2\x82", "\ufffd"),            # truncated sequence: one replacement
    (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # surrogate: second byte out of range
    (b"\xc0\xaf", "\ufffd\ufffd"),      # overlong
])
def test_sanitize_utf8(raw, expect):
    assert T.sanitize_utf8(raw) == expect


def test_complete_utf8_prefix_holds_back_only_incomplete_tails():
    euro = "€".encode()
    assert T.complete_utf8_prefix(b"ab" + euro[:2]) == 2
    assert T.complete_utf8_prefix(b"ab" + euro) == 5
    assert T.complete_utf8_prefix(b"ab\xff") == 3
    assert T.complete_utf8_prefix(b"ab\xe2A") == 4  # invalid already: released


# -- text stream and stop strings -------------------------------------------------------------

def stream(pieces, stop=()):
    s = T.TextStream(list(stop))
    out = []
    for p in pieces:
        s.push(p)
        out.append(s.take_ready())
    out.append(s.finish())
    return out, s


def test_stream_splits_multibyte_characters_safely():
    snowman = "☃".encode()
    out, s = stream([b"a", snowman[:1], snowman[1:2], snowman[2:] + b"b"])
    assert out == ["a", "", "", "☃b", ""]
    assert s.text() == "a☃b"


def test_stop_string_across_pieces_cuts_output_before_it():
    out, s = stream([b"hello ", b"wor", b"ld and more"], stop=["world"])
    assert "".join(out) == "hello "
    assert s.stopped and s.text() == "hello "
    # the partial "wor" was held back, never released
    assert out[1] == ""


def test_earliest_stop_string_wins_and_later_pushes_are_ignored():
    s = T.TextStream(["bc", "abcd"])
    assert s.push(b"xabcd")   # "abcd" starts at 1, before "bc" at 2
    assert s.text() == "x"
    assert s.push(b"more")
    assert s.finish() == "x"


def test_held_back_prefix_is_released_when_it_stops_matching():
    out, s = stream([b"ab", b"x"], stop=["abc"])
    assert out == ["", "abx", ""]
    assert not s.stopped


def test_empty_stream():
    out, s = stream([])
    assert out == [""] and s.text() == ""
