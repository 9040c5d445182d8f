"""Models by name (issue #23): which GGUF a repository listing gives (pure logic here), and the
real download code against a fake Hub on 127.0.0.1 (HF_ENDPOINT, a temporary HF_HOME)."""
import pytest

from heterospec.hub import HubError, choose_files, parse_spec

LISTING = ["README.md", "config.json", "model-Q2_K.gguf", "model-Q4_K.gguf", "model-Q4_K_M.gguf",
           "model-Q8_0.gguf", "mmproj-model-f16.gguf", "big/model-F16-00001-of-00003.gguf",
           "big/model-F16-00002-of-00003.gguf", "big/model-F16-00003-of-00003.gguf"]


@pytest.mark.parametrize("spec, want", [("owner/name", ("owner/name", None)), ("o/n:Q8_0", ("o/n", "Q8_0")),
                                        ("o/n:q4_k_m", ("o/n", "q4_k_m"))])
def test_specs(spec, want):
    assert parse_spec(spec) == want


@pytest.mark.parametrize("spec", ["name", "a/b/c", "/name", "owner/", ""])
def test_bad_specs(spec):
    with pytest.raises(ValueError, match="owner/name"):
        parse_spec(spec)


@pytest.mark.parametrize("tag, filename, want", [
    (None, None, ["model-Q4_K_M.gguf"]),                       # llama.cpp's default quant
    ("Q8_0", None, ["model-Q8_0.gguf"]), ("q8_0", None, ["model-Q8_0.gguf"]),
    ("Q4_K", None, ["model-Q4_K.gguf"]),                       # a whole tag, not a prefix of Q4_K_M
    ("F16", None, [f"big/model-F16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]),   # split: every part
    (None, "*Q2_K.gguf", ["model-Q2_K.gguf"]), (None, "model-Q8_0.gguf", ["model-Q8_0.gguf"]),
    (None, "big/*", [f"big/model-F16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]),
])
def test_choosing_the_gguf(tag, filename, want):
    assert choose_files(LISTING, "o/n", tag, filename) == want


def test_the_first_gguf_without_the_default_quant():
    assert choose_files(["b-Q5_0.gguf", "a-Q6_K.gguf", "mmproj.gguf"], "o/n") == ["a-Q6_K.gguf"]


@pytest.mark.parametrize("files, tag, filename, message", [
    (["README.md", "model.safetensors"], None, None, "no GGUF file"),
    (["mmproj-f16.gguf"], None, None, "no GGUF file"),
    (LISTING, "Q9_9", None, "no GGUF for the quant 'Q9_9'; it has: model-F16 \\(split\\), model-Q2_K.gguf"),
    (LISTING, None, "*.bin", "no GGUF matching"),
    (LISTING, None, "*Q*", "match '\\*Q\\*'"),
    (["m-00001-of-00002.gguf"], None, None, "lacks 1 of its 2 parts"),
])
def test_what_cannot_be_chosen(files, tag, filename, message):
    with pytest.raises(HubError, match=message):
        choose_files(files, "o/n", tag, filename)


# -- the real download code against a fake Hub on 127.0.0.1 -------------------------------------
# Each check runs in a subprocess: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE
# when it is imported.

import subprocess  # noqa: E402
import sys  # noqa: E402

from fake_hub import FakeHub, hub_env  # noqa: E402
from gguf_factory import write_llama  # noqa: E402

pytest.importorskip("huggingface_hub", reason="the hf extra is not installed: pip install 'heterospec[hf]'")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny):
    """A fake Hub: org/tiny-GGUF (two quants of the tiny model, a projector, a README), a split
    model, a draft repo, a gated repo and one without GGUFs."""
    root = tmp_path_factory.mktemp("hub-files")
    target = tiny.target.read_bytes()
    split_first = write_llama(root / "split" / "tiny-F16.gguf" if (root / "split").mkdir() is None else None,
                              split_max_tensors=8)
    fake = FakeHub()
    # two "quants" of one model: distinct files (the cache keeps one copy of equal ones), the same model
    fake.add_repo("org/tiny-GGUF", {"README.md": b"# tiny", "tiny-Q4_K_M.gguf": target,
                                    "tiny-Q8_0.gguf": target + b"\0" * 64, "mmproj-tiny-f16.gguf": b"not a model"})
    fake.add_repo("org/split-GGUF", {p.name: p.read_bytes() for p in sorted(split_first.parent.glob("*.gguf"))})
    fake.add_repo("org/draft-GGUF", {"draft-Q4_K_M.gguf": tiny.draft.read_bytes()})
    fake.add_repo("org/gated-GGUF", {"tiny-Q4_K_M.gguf": target}, gated=True)
    fake.add_repo("org/weights-only", {"model.safetensors": b"\0" * 16, "config.json": b"{}"})
    url = fake.start()
    yield fake, url
    fake.stop()


@pytest.fixture
def env(hub, tmp_path):
    _, url = hub
    return hub_env(url, tmp_path / "hf-home")


def run(env, *args, code=None):
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "heterospec", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


def downloads(fake):
    return [path.rsplit("/", 1)[1] for method, path in fake.requests if method == "GET" and "/resolve/" in path]


def test_generate_by_name_picks_the_quant_and_uses_the_cache_offline(hub, env, tiny, tiny_engine):
    fake, _ = hub
    fake.requests.clear()
    want = tiny_engine.generate("hello", max_tokens=6, temperature=0).text
    p = run(env, "generate", "-hf", "org/tiny-GGUF:Q8_0", "-p", "hello", "-n", 6, "--temp", 0, "-t", 1,
            "--no-display-prompt")
    assert p.returncode == 0, p.stderr
    assert p.stdout == want + "\n" and downloads(fake) == ["tiny-Q8_0.gguf"]
    # the default quant, Q4_K_M; then the same again with the network off: from the cache
    p = run(env, "generate", "-hf", "org/tiny-GGUF", "-p", "hello", "-n", 6, "--temp", 0, "-t", 1,
            "--no-display-prompt")
    assert p.returncode == 0 and downloads(fake) == ["tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf"], p.stderr
    fake.requests.clear()
    p = run({**env, "HF_HUB_OFFLINE": "1"}, "generate", "-hf", "org/tiny-GGUF", "-p", "hello", "-n", 6, "--temp", 0,
            "-t", 1, "--no-display-prompt")
    assert p.returncode == 0 and p.stdout == want + "\n", p.stderr
    assert fake.requests == []


def test_a_cached_model_loads_when_the_hub_cannot_be_reached(tmp_path, tiny):
    fake = FakeHub()
    fake.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny.target.read_bytes()})
    env = hub_env(fake.start(), tmp_path / "hf-home")
    assert run(env, "profile", "-hf", "org/tiny-GGUF", "-t", 1).returncode == 0
    fake.stop()   # no network now, and no HF_HUB_OFFLINE: the cache answers
    p = run(env, "generate", "-hf", "org/tiny-GGUF", "-p", "hello", "-n", 2, "-t", 1)
    assert p.returncode == 0, p.stderr
    p = run(env, "generate", "-hf", "org/other-GGUF", "-p", "hello", "-n", 2, "-t", 1)
    assert p.returncode == 1 and "cannot fetch org/other-GGUF" in p.stderr and "network" in p.stderr


def test_split_ggufs_are_fetched_whole(hub, env):
    fake, _ = hub
    fake.requests.clear()
    p = run(env, "generate", "-hf", "org/split-GGUF", "-p", "hello", "-n", 3, "-t", 1)
    assert p.returncode == 0, p.stderr
    assert sorted(downloads(fake)) == [f"tiny-F16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_from_pretrained_with_a_draft_and_a_file_glob(hub, env, tiny_engine):
    code = ("from heterospec import Engine\n"
            "e = Engine.from_pretrained('org/tiny-GGUF', filename='*Q8_0.gguf', draft_repo_id='org/draft-GGUF', "
            "n_threads=1)\n"
            "assert e.has_draft, e.drafters\n"
            "print(e.generate('hello', max_tokens=5, temperature=0, mode='chain').text, end='')")
    p = run(env, code=code)
    assert p.returncode == 0, p.stderr
    assert p.stdout == tiny_engine.generate("hello", max_tokens=5, temperature=0).text


@pytest.mark.parametrize("args, message", [
    (("-hf", "org/no-such-GGUF"), "there is no repository org/no-such-GGUF"),
    (("-hf", "org/gated-GGUF"), "is gated: accept its terms"),
    (("-hf", "org/weights-only"), "has no GGUF file"),
    (("-hf", "org/tiny-GGUF:Q3_K_S"), "no GGUF for the quant 'Q3_K_S'; it has: tiny-Q4_K_M.gguf, tiny-Q8_0.gguf"),
    (("-hf", "org/tiny-GGUF", "-hff", "*.bin"), "no GGUF matching"),
    (("-hf", "not-a-repo"), "owner/name"),
    (("-m", "x.gguf", "-hff", "a.gguf"), "--hf-file needs -hf"),
])
def test_what_cannot_be_fetched_says_what_to_do(env, args, message):
    p = run(env, "generate", *args, "-p", "hello", "-n", 2)
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_a_gated_repo_with_a_token_downloads(hub, env):
    fake, _ = hub
    p = run({**env, "HF_TOKEN": fake.token}, "generate", "-hf", "org/gated-GGUF", "-p", "hello", "-n", 2, "-t", 1)
    assert p.returncode == 0, p.stderr


def test_without_the_extra_the_message_says_how_to_install_it(env):
    code = ("import sys; sys.modules['huggingface_hub'] = None\n"
            "from heterospec.cli import main\n"
            "sys.exit(main(['generate', '-hf', 'org/tiny-GGUF', '-p', 'x']))")
    p = run(env, code=code)
    assert p.returncode == 1 and "pip install 'heterospec[hf]'" in p.stderr, p.stderr


def test_nothing_downloads_unless_asked(hub, env, tiny):
    fake, _ = hub
    fake.requests.clear()
    assert run(env, "generate", "-m", tiny.target, "-p", "hello", "-n", 2, "-t", 1).returncode == 0
    assert fake.requests == []


def test_bench_takes_models_by_name(hub, env, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello world"}\n')
    p = run(env, "bench", "-hf", "org/tiny-GGUF", "-hfd", "org/draft-GGUF", "--prompts", prompts, "-n", 4,
            "--repeats", 1, "--modes", "ar", "chain", "-t", 1, "--json", tmp_path / "b.json",
            "--cache-dir", tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    assert "chain" in p.stdout
