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
    assert r == {"tokens": 96, "seconds": 96 / 640.0, "tokens_per_second": 640.0, "n_drafted": 120, "n_accept": 61}
    # llama-batched's line (the plain baseline)
    r = parse_peer_output("main: decoded 96 tokens in 0.09 s, speed: 1066.67 t/s\n")
    assert r == {"tokens": 96, "seconds": 96 / 1066.67, "tokens_per_second": 1066.67}


def test_bench_reports_modes_and_survives_a_missing_peer(tiny, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello world", "category": "a"}) + "\n{broken\n"
                       + json.dumps({"prompt": "the value is", "category": "b"}) + "\n")
    out = tmp_path / "r.json"
    monkeypatch.setenv("HETEROSPEC_LLAMA_CPP_DIR", str(tmp_path))   # no llama.cpp there: the peer fails
    rc = main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--prompts", str(prompts), "-n", "16",
               "--repeats", "2", "-t", "1", "--json", str(out), "--peer", "--cache-dir", str(tmp_path / "c"),
               "--modes", "ar", "chain", "tree:depth=3,budget=3", "heterospec"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "peer unavailable" in captured.err
    doc = json.loads(out.read_text())
    modes = doc["modes"]
    for name in ("ar", "chain", "tree:depth=3,budget=3", "heterospec"):
        assert modes[name]["tokens_per_second"] > 0
        assert modes[name]["greedy_matches_ar"] == 1.0
    assert modes["ar"]["speedup"] == 1.0 and modes["tree:depth=3,budget=3"]["tau"] > 1
    peers = [k for k in modes if k.startswith("llama.cpp")]
    assert "llama.cpp" in peers and any(k.startswith("llama.cpp-spec n_max=4 p_min=0") for k in peers)
    assert all("error" in modes[k] for k in peers)
    assert "failed" in captured.out
