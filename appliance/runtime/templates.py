"""Chat templates: the manifest's, else the GGUF's, else a default for the architecture.

Templates are Jinja, rendered in a sandbox (a template arrives inside a signed bundle, but a
sandbox costs nothing and keeps a template from reaching Python internals).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.errors import ModelError

# Turn formats of common architectures, for GGUF files that carry no template of their own.
GEMMA = (
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
DEFAULTS = {
    "gemma": GEMMA,
    "gemma2": GEMMA,
    "gemma3": GEMMA,
    "qwen2": CHATML,
    "qwen3": CHATML,
    "llama": LLAMA3,
}

_ENV = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)


def choose_template(manifest_template: str | None, gguf_metadata: Mapping[str, str]) -> str:
    """The manifest's template, else the GGUF's, else the architecture's default."""
    if manifest_template:
        return manifest_template
    embedded = gguf_metadata.get("tokenizer.chat_template")
    if embedded:
        return embedded
    architecture = gguf_metadata.get("general.architecture", "")
    if architecture in DEFAULTS:
        return DEFAULTS[architecture]
    return CHATML


def _raise_exception(message: str) -> None:
    """What published templates call to refuse a conversation (e.g. roles out of order)."""
    raise TemplateError(message)


def render(template: str, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
    """The prompt text for these messages, ending with the assistant's turn opened.

    ``bos_token`` renders empty: llama.cpp adds BOS itself when it tokenizes the prompt.
    """
    try:
        return _ENV.from_string(template).render(
            messages=list(messages),
            raise_exception=_raise_exception,
            add_generation_prompt=True,
            bos_token="",
            eos_token="",
            **extra,
        )
    except TemplateError as e:
        raise ModelError(f"chat template failed to render: {e}") from e
    except Exception as e:  # a template's own runtime error (TypeError, ZeroDivisionError, …)
        raise ModelError(f"chat template failed to render: {type(e).__name__}: {e}") from e
