"""Shared fixtures: the suite's own tiny models, and the real models in ../shared when present."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import gguf_factory as factory  # noqa: E402

from heterospec import Engine  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MODELS = SHARED / "models"


class TinyModels:
    """Paths of generated models: a target, a draft that mostly agrees with it, a model that
    often ends generation, and one with a different vocabulary."""

    def __init__(self, root: Path):
        self.root = root
        self.target = factory.write_llama(root / "target.gguf", seed=1, n_ctx_train=512)
        self.draft = factory.write_llama(root / "draft.gguf", base=self.target, noise=0.05, seed=2,
                                         n_ctx_train=512)
        self.eos = factory.write_llama(root / "eos.gguf", seed=3, eos_boost=2.0, n_ctx_train=512)
        self.other_vocab = factory.write_llama(root / "other_vocab.gguf", factory.make_vocab("b"), seed=4)
        self.f16 = factory.write_llama(root / "f16.gguf", seed=5, dtype="f16", n_embd=32, n_ff=64)


@pytest.fixture(scope="session", autouse=True)
def profile_cache_dir(tmp_path_factory):
    """Cost profiles go to a temporary cache, never to the user's ~/.cache."""
    import os
    path = tmp_path_factory.mktemp("cache")
    os.environ["HETEROSPEC_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_engine(tiny) -> Engine:
    with Engine(tiny.target, n_threads=2) as e:
        yield e


def shared_model(name: str) -> Path:
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the real models live in ../shared/models beside the repo)")
    return path


@pytest.fixture(scope="session")
def code_target() -> Path:
    return shared_model("code-target.gguf")


@pytest.fixture(scope="session")
def code_draft() -> Path:
    return shared_model("code-draft.gguf")


@pytest.fixture(scope="session")
def code_engine(code_target) -> Engine:
    with Engine(code_target, n_threads=2) as e:
        yield e


@pytest.fixture(scope="session")
def code_prompts() -> list[str]:
    path = SHARED / "data" / "code_prompts.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    with open(path) as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


TINY_PROMPTS = ["hello world", "def print(self):", "the value is None", "import my class",
                "while True: return", "for name in value", "x", "what is the name of you"]
