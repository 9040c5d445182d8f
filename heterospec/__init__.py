"""HeteroSpec: exact heterogeneous tree speculative decoding for GGUF models, on llama.cpp."""

from .engine import Engine, GenerationResult, Stats

__all__ = ["Engine", "GenerationResult", "Stats", "__version__"]
__version__ = "0.1.0"
