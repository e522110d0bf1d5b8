"""How the OpenAI-compatible routes shape an answer: a whole document, or SSE chunks.

One ``Format`` per endpoint (chat completions, completions): the opening chunks, one piece
per token, the closing chunk with the finish reason and the ``appliance`` envelope, the usage
chunk, and the whole document for a non-streamed answer; log-probabilities in each endpoint's
own shape.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.runtime.backend import TokenEvent


def usage_of(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_of(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def sse(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document, separators=(',', ':'))}\n\n"


class Format:
    """How one endpoint shapes its answer: a whole document, or the chunks of a stream."""

    def __init__(self, base: dict[str, Any], wants_logprobs: bool) -> None:
        self.base, self.wants_logprobs = base, wants_logprobs

    def opening(self) -> list[dict[str, Any]]:
        return []

    def piece(self, text: str, event: TokenEvent | None) -> dict[str, Any] | None:
        raise NotImplementedError

    def closing(self, finish: str, envelope: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self.base, "choices": [], "usage": usage}

    def document(
        self, text: str, finish: str, usage: dict[str, int], events: list[TokenEvent] | None
    ) -> dict[str, Any]:
        raise NotImplementedError


def chat_logprob(event: TokenEvent) -> dict[str, Any]:
    return {
        "token": event.token,
        "logprob": event.logprob,
        "bytes": list(event.token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
            for t, lp in event.top_logprobs
        ],
    }


class ChatFormat(Format):
    def opening(self) -> list[dict[str, Any]]:
        opening = {"role": "assistant", "content": ""}
        return [
            {
                **self.base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": opening, "finish_reason": None}],
            }
        ]

    def piece(self, text: str, event: TokenEvent | None) -> dict[str, Any] | None:
        with_logprob = self.wants_logprobs and event is not None and event.token_id >= 0
        if not text and not with_logprob:
            return None
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        if with_logprob:
            assert event is not None
            choice["logprobs"] = {"content": [chat_logprob(event)]}
        return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}

    def closing(self, finish: str, envelope: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.base,
            "object": "chat.completion.chunk",
            "appliance": envelope,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        }

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": usage}

    def document(
        self, text: str, finish: str, usage: dict[str, int], events: list[TokenEvent] | None
    ) -> dict[str, Any]:
        logprobs = None
        if self.wants_logprobs and events is not None:
            logprobs = {"content": [chat_logprob(e) for e in events if e.token_id >= 0]}
        return {
            **self.base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }


def completion_logprobs(events: list[TokenEvent], offset: int) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for event in events:
        if event.token_id < 0:
            continue
        offsets.append(offset)
        offset += len(event.token)
        tokens.append(event.token)
        token_logprobs.append(event.logprob)
        tops.append(dict(event.top_logprobs))
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


class CompletionFormat(Format):
    def __init__(self, base: dict[str, Any], wants_logprobs: bool, prefix: str) -> None:
        super().__init__(base, wants_logprobs)
        self.prefix, self.opened = prefix, False

    def piece(self, text: str, event: TokenEvent | None) -> dict[str, Any] | None:
        text = text if self.opened else self.prefix + text
        with_logprob = self.wants_logprobs and event is not None and event.token_id >= 0
        if not text and not with_logprob:
            return None
        self.opened = True
        logprobs = completion_logprobs([event], 0) if with_logprob and event else None
        return {
            **self.base,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": None}],
        }

    def closing(self, finish: str, envelope: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.base,
            "appliance": envelope,
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}],
        }

    def document(
        self, text: str, finish: str, usage: dict[str, int], events: list[TokenEvent] | None
    ) -> dict[str, Any]:
        logprobs = None
        if self.wants_logprobs and events is not None:
            logprobs = completion_logprobs(events, len(self.prefix))
        return {
            **self.base,
            "choices": [
                {
                    "index": 0,
                    "text": self.prefix + text,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }
