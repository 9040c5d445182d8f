"""HeteroSpec: exact heterogeneous tree speculative decoding for GGUF models, on llama.cpp."""

from .chat_template import ChatTemplateError
from .engine import Engine, EngineBusy, GenerationResult, Stats, Stream

__all__ = ["ChatTemplateError", "Engine", "EngineBusy", "GenerationResult", "Stats", "Stream", "__version__"]
__version__ = "0.1.0"
