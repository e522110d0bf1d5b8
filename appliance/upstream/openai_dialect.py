"""OpenAI chat completions: ``POST {base_url}/chat/completions``, a bearer key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.upstream.dialect import AnswerError, count, model_of


class OpenAIDialect:
    path = "/chat/completions"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def body(self, item: Escalation, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [dict(m) for m in item.messages],
            "max_tokens": item.max_tokens,
            "temperature": item.temperature,
            "top_p": item.top_p,
        }
        if item.stop:
            body["stop"] = list(item.stop)
        return body

    def answer(self, data: Mapping[str, Any], upstream: str, model: str) -> UpstreamAnswer:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise AnswerError("malformed answer: no choices", True)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise AnswerError("malformed answer: no message", True)
        content = message.get("content")
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) and finish else "stop"
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        if content is not None and not isinstance(content, str):
            raise AnswerError("malformed answer: content is not text", True)
        if not content:
            why = "a refusal" if message.get("refusal") else f"finish_reason {finish}"
            raise AnswerError(f"the answer has no text ({why})", False)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return UpstreamAnswer(
            text=content,
            upstream=upstream,
            model=model_of(data, model),
            prompt_tokens=count(usage.get("prompt_tokens")),
            completion_tokens=count(usage.get("completion_tokens")),
            finish_reason=finish,
        )
