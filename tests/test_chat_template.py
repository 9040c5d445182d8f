"""GGUF chat templates rendered with jinja2 as Hugging Face renders them, llama.cpp's built-ins
as the fallback, and clear errors for templates that fail."""
import pytest

from heterospec import ChatTemplateError, Engine
from heterospec.chat_template import render
from conftest import shared_model

HELLO = [{"role": "user", "content": "Hi"}]


def test_smollm2_template_adds_its_default_system_prompt_like_hugging_face():
    # The string Hugging Face's apply_chat_template(..., add_generation_prompt=True) returns for
    # HuggingFaceTB/SmolLM2-135M-Instruct (llama.cpp's built-in chatml loses the system prompt).
    with Engine(shared_model("SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=512) as e:
        assert e.format_chat(HELLO) == (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        own = [{"role": "system", "content": "Be brief."}] + HELLO
        assert e.format_chat(own, add_generation_prompt=False) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
        assert e.format_chat(HELLO, chat_template="chatml") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_the_gguf_template_is_rendered_and_can_be_overridden(tiny_engine):
    assert tiny_engine.chat_template and "{%" in tiny_engine.chat_template
    assert tiny_engine.format_chat(HELLO) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    custom = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    assert tiny_engine.format_chat(HELLO, chat_template=custom) == "[user] Hi</s>"
    # OpenAI content parts
    parts = [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]
    assert tiny_engine.format_chat(parts, chat_template=custom) == "[user] Hi</s>"


def test_bos_in_the_template_is_not_doubled(tiny_engine):
    with_bos = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    prompt = tiny_engine.format_chat(HELLO, chat_template=with_bos)
    ids = tiny_engine.tokenize(prompt, parse_special=True)
    bos = tiny_engine._engine.special_tokens[0]
    assert ids[0] == bos and ids[1] != bos


def test_tools_and_extra_variables_reach_the_template():
    t = "{% if tools %}{{ tools | tojson }}{% endif %}{{ greeting }}{{ messages[0].content }}"
    out = render(t, HELLO, tools=[{"name": "météo"}], greeting="¡")
    assert out == '[{"name": "météo"}]¡Hi'


@pytest.mark.parametrize("template,words", [
    ("{% for m in messages %}{{ m.content }", "does not parse"),
    ("{{ raise_exception('Conversation roles must alternate') }}", "Conversation roles must alternate"),
    ("{{ messages[0].content.nonexistent() }}", "failed to render"),
    ("{{ ().__class__.__base__.__subclasses__() }}", "failed to render"),   # the sandbox
])
def test_a_failing_template_is_a_clear_error(tiny_engine, template, words):
    with pytest.raises(ChatTemplateError, match=words):
        tiny_engine.format_chat(HELLO, chat_template=template)


@pytest.mark.parametrize("messages,words", [
    ([], "empty"),
    ("hello", "list"),
    ([{"content": "x"}], "role"),
    ([{"role": "user"}], "no content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "text content parts"),
])
def test_bad_messages_are_value_errors(tiny_engine, messages, words):
    with pytest.raises(ValueError, match=words):
        tiny_engine.format_chat(messages)
