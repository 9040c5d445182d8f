"""The command line: `heterospec generate` and `python -m heterospec`."""
import subprocess
import sys

from heterospec.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "heterospec", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_generate_streams_the_continuation(tiny, tiny_engine):
    p = run("generate", "-m", tiny.target, "-p", "hello world", "-n", 12, "--temp", 0, "-t", 1,
            "--no-display-prompt")
    assert p.returncode == 0, p.stderr
    expected = tiny_engine.generate("hello world", max_tokens=12, temperature=0).text
    assert p.stdout == expected + "\n"
    assert "12 tokens" in p.stderr and "tok/s" in p.stderr and "finish: length" in p.stderr


def test_generate_echoes_the_prompt_by_default_like_llama_cpp(code_target, code_engine):
    p = run("generate", "-m", code_target, "-p", "def fibonacci(n):", "-n", 16, "--temp", 0)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "def fibonacci(n):" + code_engine.generate("def fibonacci(n):", max_tokens=16,
                                                                  temperature=0).text + "\n"


def test_sampling_flags_and_stop(tiny, tiny_engine, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("the value is")
    p = run("generate", "-m", tiny.target, "-f", prompt_file, "-n", 20, "--temp", 0.7, "--top-k", 10,
            "--top-p", 0.9, "--min-p", 0.01, "--repeat-penalty", 1.1, "-s", 7, "-r", "zz", "--no-display-prompt")
    assert p.returncode == 0, p.stderr
    r = tiny_engine.generate("the value is", max_tokens=20, temperature=0.7, top_k=10, top_p=0.9, min_p=0.01,
                             repeat_penalty=1.1, seed=7, stop=["zz"])
    assert p.stdout == r.text + "\n"


def test_errors_are_one_line_messages(tiny, tmp_path):
    p = run("generate", "-m", tmp_path / "nope.gguf", "-p", "x")
    assert p.returncode == 1 and "error: model file not found" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("generate", "-m", tiny.target, "-md", tiny.other_vocab, "-p", "x")
    assert p.returncode == 1 and "vocabulary differs" in p.stderr
    p = run("generate", "-m", tiny.target, "-p", "x", "--top-p", 2)
    assert p.returncode == 1 and "top_p" in p.stderr


def test_main_in_process(tiny, capsys):
    assert main(["generate", "-m", str(tiny.target), "-p", "hi", "-n", "3", "--temp", "0", "-t", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("hi") and "3 tokens" in out.err


def test_speculative_flags(tiny, tiny_engine):
    expected = tiny_engine.generate("hello world", max_tokens=16, temperature=0).text
    for flags in (["--mode", "tree", "--tree-depth", "3", "--tree-branching", "2", "--tree-width", "2",
                   "--tree-budget", "5"],
                  ["--mode", "chain", "--spec-draft-n-max", "3", "--spec-draft-p-min", "0.1"]):
        p = run("generate", "-m", tiny.target, "-md", tiny.draft, "-p", "hello world", "-n", 16, "--temp", 0,
                "-t", 1, "--no-display-prompt", *flags)
        assert p.returncode == 0, p.stderr
        assert p.stdout == expected + "\n"
        assert "tokens/step" in p.stderr and flags[1] in p.stderr
    p = run("generate", "-m", tiny.target, "-p", "x", "--drafter", "model")
    assert p.returncode == 1 and "needs a draft model" in p.stderr
    # one model: n-gram drafts, the same text
    p = run("generate", "-m", tiny.target, "-p", "hello world", "-n", 16, "--temp", 0, "-t", 1,
            "--no-display-prompt", "--drafter", "ngram", "--mode", "tree")
    assert p.returncode == 0 and p.stdout == expected + "\n" and "(ngram drafts)" in p.stderr, p.stderr
    assert "ngram-simple" in run("generate", "--help").stdout     # --drafter maps to llama.cpp's names
