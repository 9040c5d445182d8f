"""Bad input gets a clear Python exception, never a crash, and the engine stays usable."""
import math

import pytest

import gguf_factory as factory
from heterospec import Engine


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("bad")
    return {
        "not_gguf": factory.write_not_gguf(root / "not.gguf"),
        "truncated": factory.write_truncated(tiny.target, root / "truncated.gguf", keep_fraction=0.6),
        "header_only": factory.write_truncated(tiny.target, root / "header.gguf", keep_fraction=0.001),
        "unknown_arch": factory.write_unknown_arch(root / "unknown.gguf"),
        "empty": _touch(root / "empty.gguf"),
        "directory": root,
    }


def _touch(path):
    path.write_bytes(b"")
    return path


def test_missing_model_file(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="not found"):
        Engine(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="missing-draft"):
        Engine(tiny.target, draft=tmp_path / "missing-draft.gguf")


@pytest.mark.parametrize("kind, message", [
    ("not_gguf", "not a GGUF file"),
    ("empty", "not a GGUF file"),
    ("truncated", "truncated"),
    ("header_only", "corrupt or truncated"),
    ("unknown_arch", "failed to load model.*unknown model architecture"),
    ("directory", "not a file"),
])
def test_unusable_model_files(bad_files, kind, message):
    with pytest.raises(ValueError, match=message):
        Engine(bad_files[kind])


def test_bad_draft_file_is_reported_as_such(bad_files, tiny):
    with pytest.raises(ValueError, match="truncated"):
        Engine(tiny.target, draft=bad_files["truncated"])


def test_draft_with_another_vocabulary(tiny):
    with pytest.raises(ValueError, match="vocabulary differs.*size"):
        Engine(tiny.target, draft=tiny.other_vocab)


def test_draft_with_another_vocabulary_of_the_same_size(tmp_path, tiny):
    v = factory.make_vocab()
    v.tokens[300] = v.tokens[300] + "x"
    other = factory.write_llama(tmp_path / "renamed.gguf", v, seed=9)
    with pytest.raises(ValueError, match="token 300 is"):
        Engine(tiny.target, draft=other)


def test_stories_draft_against_the_code_target(code_target):
    from conftest import shared_model
    stories = shared_model("stories260K.gguf")
    with pytest.raises(ValueError, match="vocabulary differs"):
        Engine(code_target, draft=stories)


@pytest.mark.parametrize("options, message", [
    (dict(n_ctx=-1), "n_ctx"),
    (dict(n_ctx=4), "n_ctx"),
    (dict(n_batch=0), "n_batch"),
    (dict(n_threads=-2), "n_threads"),
    (dict(flash_attn="maybe"), "flash_attn"),
    (dict(cache_type_k="q9_9"), "cache_type_k"),
    (dict(cache_type_v="q4_0", flash_attn=False), "flash attention"),
])
def test_invalid_engine_options(tiny, options, message):
    with pytest.raises(ValueError, match=message):
        Engine(tiny.target, **options)


def test_wrongly_typed_engine_options(tiny):
    with pytest.raises(TypeError):
        Engine(tiny.target, n_ctx="big")


@pytest.mark.parametrize("kw, message", [
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(temperature=math.nan), "temperature"),
    (dict(max_tokens=-5), "max_tokens"),
    (dict(seed=-2), "seed"),
    (dict(seed=2**64 - 1), "seed"),
    (dict(stop=[""]), "stop"),
    (dict(repeat_last_n=-3), "repeat_last_n"),
])
def test_invalid_sampling_values_then_engine_still_works(tiny_engine, kw, message):
    with pytest.raises(ValueError, match=message):
        tiny_engine.generate("hello", **kw)
    with pytest.raises(ValueError, match=message):
        tiny_engine.stream("hello", **kw)
    assert len(tiny_engine.generate("hello", max_tokens=3, temperature=0).tokens) == 3


def test_prompt_longer_than_the_context(tiny):
    with Engine(tiny.target, n_ctx=64, n_threads=1) as e:
        long_prompt = "hello world " * 400
        with pytest.raises(ValueError, match=r"prompt has \d+ tokens but the context holds"):
            e.generate(long_prompt, max_tokens=4)
        with pytest.raises(ValueError, match="context"):
            e.stream(long_prompt)
        assert len(e.generate("hello", max_tokens=4, temperature=0).tokens) == 4


def test_bad_prompts_and_tokens(tiny_engine):
    with pytest.raises(ValueError, match="empty"):
        tiny_engine.generate([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_engine.generate([1, tiny_engine.n_vocab])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_engine.generate([-1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_engine.detokenize([5, 10**6])
    with pytest.raises(ValueError, match="messages"):
        tiny_engine.chat([])
    with pytest.raises(ValueError, match="role"):
        tiny_engine.chat([{"content": "no role"}])
    with pytest.raises(ValueError, match="chat template"):
        tiny_engine.format_chat([{"role": "user", "content": "x"}], chat_template="{{ not a known template }}")
    assert len(tiny_engine.generate("hello", max_tokens=2, temperature=0).tokens) == 2


def test_closed_engine(tiny):
    e = Engine(tiny.target, n_threads=1)
    e.close()
    with pytest.raises(RuntimeError, match="closed"):
        e.generate("hello")


def _gguf(path, kv=(), tensors=(), tokens=None):
    """A minimal GGUF: metadata and tensors as given (enough for the pre-load checks)."""
    import gguf
    import numpy as np
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv:
        w.add_uint32(key, value)
    if tokens is not None:
        w.add_token_list(tokens)
    for name, array in tensors:
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("kind, message", [
    ("no_layers", "0 layers"),
    ("heads", "not a multiple of its KV head count"),
    ("odd_rope", "rotary dimension count is odd"),
    ("duplicate_token", "twice"),
    ("f16_norm", "1-D tensors must be F32"),
    ("int_weight", "float or quantized"),
])
def test_models_llama_cpp_would_abort_on_are_refused_first(tmp_path, kind, message):
    """Each of these makes llama.cpp assert (kill the process) rather than return an error."""
    import numpy as np
    path = tmp_path / f"{kind}.gguf"
    if kind == "no_layers":
        _gguf(path, [("llama.block_count", 0)])
    elif kind == "heads":
        _gguf(path, [("llama.block_count", 1), ("llama.attention.head_count", 6),
                     ("llama.attention.head_count_kv", 4)])
    elif kind == "odd_rope":
        _gguf(path, [("llama.rope.dimension_count", 7)])
    elif kind == "duplicate_token":
        _gguf(path, tokens=["a", "b", "a"])
    elif kind == "f16_norm":
        _gguf(path, tensors=[("output_norm.weight", np.ones(8, dtype=np.float16))])
    else:
        _gguf(path, tensors=[("output.weight", np.ones((4, 8), dtype=np.int32))])
    with pytest.raises(ValueError, match=message):
        Engine(path)
