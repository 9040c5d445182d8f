"""`heterospec bench`: side-by-side figures, JSON, and the llama.cpp peer's failure handling."""
import json

from heterospec.cli import main
from heterospec.peer import parse_peer_output

PEER_LOG = """main: encoded   12 tokens in    0.010 seconds, speed: 1200.000 t/s
main: decoded   96 tokens in    0.150 seconds, speed:  640.000 t/s

main: n_draft   = 4
main: n_predict = 96
main: n_drafted = 120
main: n_accept  = 61
main: accept    = 50.833%
"""


def test_parse_peer_output():
    r = parse_peer_output(PEER_LOG)
    log = r.pop("log")
    assert r == {"tokens": 96, "seconds": 96 / 640.0, "tokens_per_second": 640.0, "n_drafted": 120, "n_accept": 61}
    assert log[0].startswith("main: decoded   96 tokens") and "main: n_accept  = 61" in log   # quoted as it is
    # llama-batched's line (the plain baseline)
    r = parse_peer_output("main: decoded 96 tokens in 0.09 s, speed: 1066.67 t/s\n")
    r.pop("log")
    assert r == {"tokens": 96, "seconds": 96 / 1066.67, "tokens_per_second": 1066.67}


def test_peer_grids():
    """With a draft model llama.cpp runs draft-simple over n_max/p_min; without one, its draftless
    types, named as llama.cpp names them."""
    from heterospec.bench import _peer_modes
    with_draft = _peer_modes("d.gguf")
    assert with_draft[0] == ("llama.cpp", None, {})
    assert all("draft-simple" in args and "-md" in args for _, args, _ in with_draft[1:])
    draftless = _peer_modes(None)
    types = {args[args.index("--spec-type") + 1] for _, args, _ in draftless[1:]}
    assert types == {"ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache"}
    assert all("-md" not in args for _, args, _ in draftless[1:])
    # a target with its own MTP head: draft-mtp, ngram-mod and both chained, as issue #19 asks
    mtp = _peer_modes(None, mtp=True)
    types = {args[args.index("--spec-type") + 1] for _, args, _ in mtp[1:]}
    assert types == {"draft-mtp", "ngram-mod", "draft-mtp,ngram-mod"}
    # an EAGLE-3 head or a DFlash draft: draft-eagle3 / draft-dflash over n_max/p_min, and
    # chained with ngram-mod (issue #20)
    for arch in ("eagle3", "dflash"):
        head = _peer_modes("h.gguf", head=arch)
        types = {args[args.index("--spec-type") + 1] for _, args, _ in head[1:]}
        assert types == {f"draft-{arch}", f"draft-{arch},ngram-mod"}
        assert all(args[args.index("-md") + 1] == "h.gguf" for _, args, _ in head[1:])


def test_bench_reports_modes_and_survives_a_missing_peer(tiny, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello world", "category": "a"}) + "\n{broken\n"
                       + json.dumps({"prompt": "the value is", "category": "b"}) + "\n")
    out = tmp_path / "r.json"
    monkeypatch.setenv("HETEROSPEC_LLAMA_CPP_DIR", str(tmp_path))   # no llama.cpp there: the peer fails
    rc = main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--prompts", str(prompts), "-n", "16",
               "--repeats", "2", "-t", "1", "--json", str(out), "--peer", "--cache-dir", str(tmp_path / "c"),
               "--modes", "ar", "chain", "tree:depth=3,budget=3", "heterospec",
               f"heterospec:policy={tmp_path / 'missing.json'}"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "peer unavailable" in captured.err
    doc = json.loads(out.read_text())
    modes = doc["modes"]
    for name in ("ar", "chain", "tree:depth=3,budget=3", "heterospec"):
        assert modes[name]["tokens_per_second"] > 0
        assert modes[name]["greedy_matches_ar"] == 1.0
    assert modes["ar"]["speedup"] == 1.0 and modes["tree:depth=3,budget=3"]["tau"] > 1
    assert "policy file not found" in modes[f"heterospec:policy={tmp_path / 'missing.json'}"]["error"]
    peers = [k for k in modes if k.startswith("llama.cpp")]
    assert "llama.cpp" in peers and any(k.startswith("llama.cpp-spec n_max=4 p_min=0") for k in peers)
    assert all("error" in modes[k] for k in peers)
    assert "failed" in captured.out
    # paired ratios against plain decoding and the best chain/tree; step breakdown; calibration
    hs = modes["heterospec"]
    assert hs["paired"]["ar"]["against"] == "ar" and hs["paired"]["best chain"]["against"] == "chain"
    r = hs["paired"]["ar"]
    assert r["low"] <= r["ratio"] <= r["high"] and r["prompts"] == 2
    b = modes["tree:depth=3,budget=3"]["breakdown_ms_per_step"]
    assert b["step"] > 0 and b["verify"] > 0 and b["profile_verify"] > 0
    assert "paired speed ratios" in captured.out and "step time" in captured.out


def test_bench_groups_categories_and_draws_the_chart(tiny, tmp_path, capsys):
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (heterospec[bench])")
    prompts = tmp_path / "spec.jsonl"
    lines = [{"turns": ["write a poem"], "category": "writing"}, {"turns": ["solve it"], "category": "math"},
             {"turns": ["translate this"], "category": "translation"},
             {"turns": ["and this"], "category": "translation"}, {"turns": ["a third"], "category": "translation"},
             {"turns": "a string, not a list", "category": "qa"}, {"category": "qa"}, {"turns": []}]
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "r.json"
    rc = main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--prompts", str(prompts), "-n", "12",
               "--repeats", "1", "-t", "1", "--json", str(out), "--per-category", "2", "--cache-dir",
               str(tmp_path / "c"), "--modes", "ar", "tree:depth=2,budget=3"])
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.out
    assert captured.err.count("skipped") == 2
    doc = json.loads(out.read_text())
    tree = doc["modes"]["tree:depth=2,budget=3"]
    # Spec-Bench's MT-bench categories are one task type; --per-category caps translation at 2;
    # a "turns" string is the prompt itself; lines without a prompt are skipped
    assert set(tree["categories"]) == {"mt_bench", "translation", "qa"}
    assert tree["categories"]["mt_bench"]["prompts"] == 2 and tree["categories"]["translation"]["prompts"] == 2
    assert doc["environment"]["n_prompts"] == 5
    for c, f in tree["categories"].items():
        assert f["tokens_per_second"] > 0 and f["speedup"] > 0 and f["tau"] >= 1
        assert doc["modes"]["ar"]["categories"][c]["speedup"] == 1.0
    assert "per category" in text and "mt_bench" in text
    env = doc["environment"]
    assert env["llama_cpp"] and env["devices"] and len(env["target_sha256"]) == 64
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"chart: {png}" in text


def test_chart_series_keeps_the_best_llama_cpp_setting():
    from heterospec.chart import chart_series
    cat = lambda s: {"a": {"speedup": s}, "b": {"speedup": s / 2}}
    results = {"ar": {"tokens_per_second": 100, "speedup": 1.0, "categories": cat(1.0)},
               "heterospec": {"tokens_per_second": 150, "speedup": 1.5, "categories": cat(1.5)},
               "llama.cpp": {"tokens_per_second": 90, "speedup": 0.9, "categories": cat(0.9)},
               "llama.cpp-spec n_max=2 p_min=0": {"tokens_per_second": 95, "speedup": 0.95, "categories": cat(0.95)},
               "llama.cpp-spec n_max=8 p_min=0.75": {"tokens_per_second": 120, "speedup": 1.2, "categories": cat(1.2)},
               "llama.cpp-spec n_max=4 p_min=0": {"error": "exited with 1"}}
    columns, series = chart_series(results)
    assert columns == ["all", "a", "b"]
    assert [s[0] for s in series] == ["ar", "heterospec", "llama.cpp", "llama.cpp-spec n_max=8 p_min=0.75 (best of grid)"]
    assert series[1][1] == [1.5, 1.5, 0.75]


def test_paired_ratio_and_its_interval():
    from heterospec.paired import paired_ratio
    # mode a is 1.2x mode b on every prompt, while the machine drifts by 30% between repeats
    b = [[100.0, 50.0, 80.0, 120.0], [130.0, 65.0, 104.0, 156.0]]
    a = [[x * 1.2 for x in rep] for rep in b]
    r = paired_ratio(a, b)
    assert abs(r["ratio"] - 1.2) < 1e-9 and r["high"] - r["low"] < 1e-9 and not r["within_noise"]
    # noisy ratios around 1: the interval holds 1
    a = [[x * f for x, f in zip(rep, (1.05, 0.93, 1.02, 0.99))] for rep in b]
    r = paired_ratio(a, b)
    assert r["within_noise"] and r["low"] < 1 < r["high"] and r["prompts"] == 4
    assert paired_ratio([[1.0]], [[2.0]]) is None   # one prompt: no interval


def test_projection_prices_recorded_steps_under_a_device_profile(tiny, tmp_path, capsys):
    from heterospec.projection import verify_ms
    prof = {"device": "test GPU", "kind": "roofline", "sizes": [1, 2, 4, 8], "verify_ms": [10.0, 10.5, 11.0, 13.0],
            "draft_level_ms": 0.5}
    assert verify_ms(prof, 3) == 10.75 and verify_ms(prof, 16) == 17.0 and verify_ms(prof, 1) == 10.0
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(prof))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello world"}) + "\n" + json.dumps({"prompt": "the value is"}) + "\n")
    out = tmp_path / "r.json"
    rc = main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--prompts", str(prompts), "-n", "24",
               "--repeats", "1", "-t", "1", "--json", str(out), "--cache-dir", str(tmp_path / "c"),
               "--cost-profile", str(path), "--modes", "ar", "chain", "heterospec"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PROJECTED (not measured)" in text and "test GPU" in text
    doc = json.loads(out.read_text())
    p = doc["projected"]
    assert p["profile"]["kind"] == "roofline" and set(p["modes"]) == {"ar", "chain", "heterospec"}
    assert abs(p["modes"]["ar"]["tokens_per_second"] - 100.0) < 1e-6      # one token per 10 ms
    # the chain verifies 3 nodes (11.5 ms with its 3 draft passes at most), emitting tau tokens per step
    ch = p["modes"]["chain"]
    assert ch["nodes_per_step"] > 2 and ch["tokens_per_second"] <= ch["tau"] / 11.0 * 1e3 + 1e-6
    assert p["modes"]["heterospec"]["nodes_per_step"] > 0    # decided by the flat profile: it speculates
    # measured figures stay apart: the modes table has no projected numbers
    assert "projected" not in doc["modes"]["chain"]
    # a bad profile fails before anything runs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sizes": [2, 4], "verify_ms": [1, 2], "draft_level_ms": 0}))
    assert main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--prompts", str(prompts),
                 "--cost-profile", str(bad)]) == 1
    assert "sizes must ascend from 1" in capsys.readouterr().err


def test_bench_compares_two_drafts_paired(tiny, tmp_path, capsys):
    """--compare-draft runs every speculative mode again with a second draft (here an EAGLE-3
    head beside the draft model), interleaved in the same repeats, paired against the same mode
    with -md; plain decoding runs once."""
    import gguf_arch
    head = gguf_arch.write_eagle3(tmp_path / "head.gguf", tiny.target, seed=3)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("hello world", "the value is")) + "\n")
    out = tmp_path / "r.json"
    prof = {"device": "test GPU", "kind": "roofline", "sizes": [1, 2, 4, 8], "verify_ms": [10.0, 10.5, 11.0, 13.0],
            "draft_level_ms": 0.5}
    (tmp_path / "gpu.json").write_text(json.dumps(prof))
    (tmp_path / "gpu-head.json").write_text(json.dumps({**prof, "draft_level_ms": 0.25}))
    rc = main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--compare-draft", str(head),
               "--prompts", str(prompts), "-n", "16", "--repeats", "2", "-t", "1", "--json", str(out),
               "--cache-dir", str(tmp_path / "c"), "--modes", "ar", "chain", "chain:drafter=eagle3",
               "--cost-profile", str(tmp_path / "gpu.json"), "--compare-cost-profile", str(tmp_path / "gpu-head.json")])
    assert rc == 0
    doc = json.loads(out.read_text())
    modes = doc["modes"]
    assert set(modes) == {"ar", "chain", "chain:drafter=eagle3", "chain [head]", "chain:drafter=eagle3 [head]"}
    assert "error" in modes["chain:drafter=eagle3"]          # the draft model is no head
    for name in ("chain [head]", "chain:drafter=eagle3 [head]"):
        assert modes[name]["greedy_matches_ar"] == 1.0 and modes[name]["nodes_per_step"] > 0
    r = modes["chain [head]"]["paired"]["same mode with -md"]
    assert r["against"] == "chain" and r["low"] <= r["ratio"] <= r["high"]
    assert doc["environment"]["compare_draft"] == str(head)
    # projected: the head's chain priced at its own draft pass, beside the draft model's
    p = doc["projected"]["modes"]
    assert p["chain [head]"]["against"] == "chain" and p["chain [head]"]["ratio_to_against"] > 0
    assert "same mode with -md (chain)" in capsys.readouterr().out
    assert main(["bench", "-m", str(tiny.target), "--compare-draft", str(head), "--prompts", str(prompts)]) == 1
    assert main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--prompts", str(prompts),
                 "--cost-profile", str(tmp_path / "gpu.json"), "--compare-cost-profile",
                 str(tmp_path / "gpu-head.json")]) == 1
    assert "give both" in capsys.readouterr().err
