"""Request bodies of the OpenAI-compatible routes (pydantic), and the `appliance` extension.

Fields OpenAI defines but the appliance does not use are accepted and ignored, so existing
clients work unchanged; values the appliance cannot honour (``n`` > 1) are refused. Ignored
fields are never forwarded to an upstream (``escalation.FORWARDED_FIELDS``).

Every text is checked at the door against the limits of the sealed batch format (a request
the API took must never block an export later) and for lone surrogates: JSON can spell
``"\ud800"``, which no UTF-8 encoder takes, so it is a 400 here rather than a 500 later.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from appliance.governance.escalation import (
    MAX_MESSAGES,
    MAX_STOP_CHARS,
    MAX_STOPS,
    MAX_TEXT_CHARS,
)

_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(value: str) -> str:
    """`value`, refused when it holds a lone surrogate (not encodable as UTF-8)."""
    if _SURROGATE.search(value) is not None:
        raise ValueError("the text holds a lone UTF-16 surrogate (not valid Unicode)")
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_encodable)]
StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS), AfterValidator(_encodable)]
ShortText = Annotated[str, Field(max_length=256), AfterValidator(_encodable)]


class ApplianceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    escalate: Literal["auto", "prefer", "never"] = "auto"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ShortText
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: StopText | list[StopText] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    appliance: ApplianceOptions = Field(default_factory=ApplianceOptions)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return value

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ContentPart(BaseModel):
    """One part of a message's content; only the text of ``text`` parts is used (and may
    leave); other parts (images, audio) are accepted and dropped."""

    model_config = ConfigDict(extra="ignore")

    type: ShortText = "text"
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = ""

    @field_validator("content")
    @classmethod
    def _text_parts_have_text(
        cls, value: str | list[ContentPart] | None
    ) -> str | list[ContentPart] | None:
        if isinstance(value, list):
            for part in value:
                if part.type == "text" and part.text is None:
                    raise ValueError("a text content part needs a string 'text'")
            if sum(len(p.text or "") for p in value) > MAX_TEXT_CHARS:
                raise ValueError(f"the content is over {MAX_TEXT_CHARS} characters")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Text | list[Text]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ShortText
    input: Text | list[Text] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    appliance: ApplianceOptions = Field(default_factory=ApplianceOptions)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
