"""Chat templates: the GGUF's Jinja `tokenizer.chat_template`, rendered as Hugging Face's
`apply_chat_template` and llama-cpp-python render it (a sandboxed jinja2 environment with
trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, and `tojson` that keeps
non-ASCII text), so that what a template adds (a default system prompt, tool descriptions) is
kept. jinja2 is an optional dependency (`heterospec[chat]`, also in `[server]`); without it, and
for models without a template, the engine falls back to llama.cpp's built-in templates.
"""
from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Optional, Sequence


class ChatTemplateError(ValueError):
    """The chat template failed to parse or render (the message names the template's problem)."""


def is_jinja(template: str) -> bool:
    """Whether `template` is Jinja source (else a llama.cpp built-in name such as "chatml")."""
    return "{{" in template or "{%" in template


def jinja_available() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    def tojson(value: Any, indent: Optional[int] = None, separators=None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template does not parse: {e}") from None


def _text_content(content: Any) -> Any:
    """OpenAI content parts ([{"type": "text", "text": ...}, ...]) as one string; other content as is."""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            parts.append(part["text"])
        return "".join(parts)
    return content


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Checks the messages and returns plain dicts with text content. Raises ValueError."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} mappings")
    if not messages:
        raise ValueError("messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"message {i} must be a mapping with a string 'role'")
        content = _text_content(m.get("content"))
        if content is None and not m.get("tool_calls"):
            raise ValueError(f"message {i} has no content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string or a list of text parts")
        out.append({**m, "content": content})
    return out


def render(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", tools: Optional[Sequence[Mapping]] = None,
           **extra: Any) -> str:
    """Renders a Jinja chat template over `messages` (checked with normalize_messages)."""
    from jinja2 import TemplateError

    compiled = _compile(template)
    try:
        return compiled.render(messages=normalize_messages(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, tools=tools, **extra)
    except ChatTemplateError:
        raise
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template failed to render: {type(e).__name__}: {e}") from None
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as e:
        raise ChatTemplateError(f"the chat template failed to render: {type(e).__name__}: {e}") from None
