"""Anthropic messages: ``POST {base_url}/messages``, an ``x-api-key`` and a version header."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.upstream.dialect import AnswerError, count, model_of

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's stop reasons in OpenAI's vocabulary, so that the rest of the box sees one set.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def anthropic_messages(
    messages: Iterable[Mapping[str, str]],
) -> tuple[str, list[dict[str, str]]]:
    """OpenAI-style messages as Anthropic wants them: ``(system, messages)``.

    Anthropic takes the system prompt as a top-level string, knows only the roles ``user``
    and ``assistant``, and refuses two consecutive messages of the same role. So system (and
    OpenAI's newer ``developer``) messages are joined into ``system``, any other role is
    sent as ``user``, and consecutive same-role messages are merged with a blank line.
    """
    system: list[str] = []
    out: list[dict[str, str]] = []
    for message in messages:
        role = message.get("role", "user")
        content = message.get("content", "")
        if role in ("system", "developer"):
            system.append(content)
            continue
        role = "assistant" if role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"] = out[-1]["content"] + "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return "\n\n".join(system), out


class AnthropicDialect:
    path = "/messages"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers

    def body(self, item: Escalation, model: str) -> dict[str, Any]:
        system, messages = anthropic_messages(item.messages)
        if not messages:
            raise AnswerError("nothing to send: the escalation has no user message", False)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": item.max_tokens,
            "messages": messages,
            "temperature": item.temperature,
        }
        # Recent Claude models refuse temperature and top_p together; 1.0 is the neutral
        # value, so it is only sent when it changes something.
        if item.top_p < 1.0:
            body["top_p"] = item.top_p
        if system:
            body["system"] = system
        if item.stop:
            body["stop_sequences"] = list(item.stop)
        return body

    def answer(self, data: Mapping[str, Any], upstream: str, model: str) -> UpstreamAnswer:
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise AnswerError("malformed answer: no content", True)
        text = "".join(
            block["text"]
            for block in blocks
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        reason = data.get("stop_reason")
        reason = reason if isinstance(reason, str) and reason else "end_turn"
        if not text:
            raise AnswerError(f"the answer has no text (stop_reason {reason})", False)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return UpstreamAnswer(
            text=text,
            upstream=upstream,
            model=model_of(data, model),
            prompt_tokens=count(usage.get("input_tokens")),
            completion_tokens=count(usage.get("output_tokens")),
            finish_reason=_FINISH.get(reason, reason),
        )
