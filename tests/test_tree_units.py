"""Draft tree, selection and batch layout: pure logic, no model."""
import numpy as np
import pytest

from heterospec import _core

T = _core.testing


def build(spec):
    """spec: list of (parent, token, q) in insertion order; node ids start at 1."""
    t = T.DraftTree()
    t.reset(100)
    for parent, token, q in spec:
        t.add(parent, token, q)
    return t


SPEC = [(0, 1, 0.6), (0, 2, 0.3), (0, 3, 0.1),   # 1 2 3: depth 1
        (1, 4, 0.9), (1, 5, 0.05),               # 4 5: under 1
        (2, 6, 0.5),                             # 6: under 2
        (4, 7, 0.8), (4, 8, 0.2)]                # 7 8: under 4


def test_values_are_products_of_q_along_the_path():
    t = build(SPEC)
    assert t.node(0) == (100, -1, 0, 1.0, 1.0)
    token, parent, depth, q, v = t.node(7)
    assert (token, parent, depth) == (7, 4, 3)
    assert v == pytest.approx(0.6 * 0.9 * 0.8)


def test_selection_is_top_n_by_value_and_closed_under_ancestors():
    t = build(SPEC)
    values = {i: t.node(i)[4] for i in range(1, len(t))}
    for n in range(0, len(t) + 2):
        sel = t.select(n)
        assert len(sel) == min(n, len(t) - 1)
        assert sorted(sel, key=lambda i: -values[i]) == sel            # best first
        chosen = set(sel)
        assert all(values[i] >= values[j] for i in chosen for j in set(values) - chosen)
        for i in sel:                                                    # ancestors included
            p = t.node(i)[1]
            assert p == 0 or p in chosen


def test_one_path_follows_the_best_selected_child():
    """Targets with recurrent memory verify a chain: of a selection, the path that takes the
    best-ranked selected child at each node."""
    t = build(SPEC)
    # values: 1 .6, 4 .54, 7 .432, 2 .3, 6 .15, 8 .108, 3 .1, 5 .03
    assert t.select_one_path(8) == [1, 4, 7]
    assert t.select_one_path(2) == [1, 4]
    assert t.select_one_path(0) == []
    t2 = build([(0, 1, 0.5), (0, 2, 0.45), (2, 3, 0.9), (1, 4, 0.1)])
    assert t2.select(4) == [1, 2, 3, 4] and t2.select_one_path(4) == [1, 4]   # the best first step


def test_ties_go_to_the_shallower_node():
    # q = 1 makes a child's value equal to its parent's
    t = build([(0, 1, 0.5), (1, 2, 1.0), (2, 3, 1.0), (0, 4, 0.5)])
    assert t.select(1) == [1]
    assert t.select(2) == [1, 4]      # equal V: depth 1 before depth 2
    sel = t.select(3)
    assert sel == [1, 4, 2]


def test_batch_layout_paths_and_children():
    t = build(SPEC)
    sel = t.select(6)   # values: 1:.6 4:.54 7:.432 2:.3 6:.15 3:.1 8:.108 5:.03
    assert sel == [1, 4, 7, 2, 6, 8]
    b = T.TreeBatch()
    b.build(t, sel)
    assert b.node == [0, 1, 2, 4, 6, 7, 8]                  # root, then by depth
    assert b.depth == [0, 1, 1, 2, 2, 3, 3]
    assert b.token == [100, 1, 2, 4, 6, 7, 8]
    assert b.parent == [-1, 0, 0, 1, 2, 3, 3]
    assert b.rank == [0, 1, 4, 2, 5, 3, 6]
    # leaves: 6 (entry 4), 7 (entry 5), 8 (entry 6): three paths
    assert b.n_paths == 3
    leaves = {e for e in range(len(b.node)) if not b.children_of(e)}
    assert leaves == {4, 5, 6}
    assert sorted(b.seqs_of(0)) == [0, 1, 2]                  # the root is on every path
    for e in range(len(b.node)):
        seqs = set(b.seqs_of(e))
        assert b.path[e] in seqs
        # an entry's paths are exactly the union of its children's
        kids = b.children_of(e)
        if kids:
            assert seqs == set().union(*(set(b.seqs_of(c)) for c in kids))
        # each path id appears at most once per depth
    for s in range(b.n_paths):
        depths = [b.depth[e] for e in range(len(b.node)) if s in b.seqs_of(e)]
        assert depths == list(range(len(depths)))               # a chain from the root
    assert b.child_with_token(0, 2) == 2 and b.child_with_token(0, 3) == -1
    assert b.child_with_token(3, 7) == 5


def test_path_batches_cost_paths_times_depth():
    """Over recurrent state every root-to-leaf path runs apart, padded to the deepest: verifying
    the first n selected nodes costs paths x (deepest + 1) tokens. A node that would open a path
    too many or reach too deep is left out with its subtree, and the rest still count; the first
    node that would make the batch too long ends it."""
    t = build(SPEC)
    sel = t.select(8)   # [1, 4, 7, 2, 6, 8, 3, 5]
    kept, tokens = T.fit_path_batch(t, sel, 8, 8, 1000)
    assert kept == list(range(8))
    # 1: one path, depth 1; 4, 7: deeper; 2: a second path; 6: deeper, still 2; 8: 3 paths ...
    assert tokens == [1, 2, 3, 4, 8, 8, 12, 16, 20]
    # two paths: 8, 3 and 5 would each open a third
    assert T.fit_path_batch(t, sel, 2, 8, 1000) == ([0, 1, 2, 3, 4], tokens[:6])
    # depth 2: 7 and 8 are too deep; 2, 6, 3 and 5 still fit
    assert T.fit_path_batch(t, sel, 8, 2, 1000) == ([0, 1, 3, 4, 6, 7], [1, 2, 3, 6, 6, 9, 12])
    assert T.fit_path_batch(t, sel, 8, 8, 11) == ([0, 1, 2, 3, 4], tokens[:6])   # 12 tokens: the end
    assert T.fit_path_batch(t, [4, 1], 8, 8, 100) == ([1], [1, 2])                # 4 before its parent: out
    assert T.fit_path_batch(t, [], 8, 8, 100) == ([], [1])
    # a node left out takes its subtree with it: 1 too deep for depth 0 leaves nothing below it
    assert T.fit_path_batch(t, sel, 8, 0, 1000) == ([], [1])


def test_paths_are_as_many_as_the_state_copies_allow():
    """Each path holds a copy of the recurrent state and its rollback planes: a small state gets
    every path, a big one (150 MB a copy, 16 planes) the chain alone."""
    gib = 1 << 30
    assert T.paths_within(100_000, 16, gib, 4) == 4
    assert T.paths_within(20 << 20, 16, gib, 4) == 3       # 340 MB a path
    assert T.paths_within(150 << 20, 16, gib, 4) == 1
    assert T.paths_within(0, 16, gib, 4) == 4
    assert T.paths_within(100_000, 16, gib, 1) == 1


def test_path_batch_lays_out_each_path_in_a_sequence_of_its_own():
    t = build(SPEC)
    sel = t.select(6)
    b = T.TreeBatch()
    b.build(t, sel)
    p = T.PathBatch()
    p.build(b)
    assert (p.n_paths, p.len) == (3, 4) and len(p.token) == 12
    for s in range(p.n_paths):
        rows = range(s * p.len, (s + 1) * p.len)
        on_path = sorted((e for e in range(len(b.node)) if s in b.seqs_of(e)), key=lambda e: b.depth[e])
        # the root first, then the path in depth order; padding repeats the leaf
        assert [p.entry[r] for r in rows][: len(on_path)] == on_path
        assert all(p.entry[r] == -1 for r in rows[len(on_path):])
        assert [p.token[r] for r in rows] == [b.token[e] for e in on_path] + \
            [b.token[on_path[-1]]] * (p.len - len(on_path))
    # every entry's logits come from one row, in the section of its path
    for e in range(len(b.node)):
        r = p.row[e]
        assert p.entry[r] == e and r // p.len == b.path[e]
    assert sum(p.outputs(r) for r in range(len(p.token))) == len(b.node)
    # one path: the chain as it always ran
    b.build(t, [1, 4, 7])
    p.build(b)
    assert (p.n_paths, p.len, p.token, p.row) == (1, 4, [100, 1, 4, 7], [0, 1, 2, 3])


def test_empty_selection_is_the_root_alone():
    t = build(SPEC)
    b = T.TreeBatch()
    b.build(t, [])
    assert b.node == [0] and b.n_paths == 1 and b.seqs_of(0) == [0]


def test_softmax_top_k_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32) * 3
    logits[17] = logits[18] = logits.max() + 1          # a tie at the top: lower id first
    got = T.softmax_top_k(logits, 5)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = sorted(range(1000), key=lambda i: (-logits[i], i))[:5]
    assert [t for t, _ in got] == order
    for t, q in got:
        assert q == pytest.approx(p[t], rel=1e-5)
    assert len(T.softmax_top_k(logits, 5000)) == 1000


def _walk(spec, choices, stop_token=-1, n_vocab=16):
    """The walk over the whole tree of `spec`; choices[node id] is the target's token there."""
    t = build(spec)
    b = T.TreeBatch()
    b.build(t, t.select(len(t)))
    rows = []
    for e in range(len(b.node)):
        row = [0.0] * n_vocab
        row[choices.get(b.node[e], 0)] = 1.0
        rows.append(row)
    last, token, emitted, stopped, accepted, out = T.walk_tree(b, rows, stop_token)
    return b, last, token, emitted, stopped, [b.node[e] for e in accepted], out


def test_walk_follows_the_tree_while_the_target_agrees():
    # the target picks 1 at the root, 4 under node 1, 9 under node 4 (not a child): path 1, 4 + token 9
    b, last, token, emitted, stopped, accepted, out = _walk(SPEC, {0: 1, 1: 4, 4: 9})
    assert accepted == [1, 4] and b.node[last] == 4 and token == 9
    assert out == [1, 4, 9] and emitted == 3 and not stopped
    # a different choice at the root: nothing accepted, the target's token alone
    b, last, token, emitted, stopped, accepted, out = _walk(SPEC, {0: 11})
    assert accepted == [] and last == 0 and out == [11] and emitted == 1
    # down to a leaf: node 7 has no children, the walk ends with the target's token there
    b, last, token, emitted, stopped, accepted, out = _walk(SPEC, {0: 1, 1: 4, 4: 7, 7: 12})
    assert accepted == [1, 4, 7] and out == [1, 4, 7, 12]


def test_walk_stops_where_generation_ends():
    # emitting token 4 ends generation (a stop): the walk ends there, inside the accepted path
    b, last, token, emitted, stopped, accepted, out = _walk(SPEC, {0: 1, 1: 4, 4: 7}, stop_token=4)
    # the drafted node that drew the final token was accepted too (the per-source counts see it)
    assert stopped and out == [1, 4] and emitted == 2 and accepted == [1, 4]


def test_selection_by_another_score_stays_closed_under_ancestors():
    t = build(SPEC)
    # a score that never exceeds the parent's, and differs from V's order
    score = [1.0, 0.5, 0.6, 0.1, 0.45, 0.01, 0.55, 0.4, 0.2]
    for n in range(len(t)):
        sel = t.select_by(score, n)
        assert sel == sorted(range(1, len(t)), key=lambda i: (-score[i], t.node(i)[2], i))[:n]
        for i in sel:
            parent = t.node(i)[1]
            assert parent == 0 or parent in sel
