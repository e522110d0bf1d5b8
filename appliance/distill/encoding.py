"""Golden pairs as token ids, exactly as the daemon would see the prompt and give the answer.

An adapter learns the token sequence it is trained on, so training must see what the box
sends to the model, token for token: the chat template the daemon chooses (the manifest's,
else the GGUF's: SmolLM2's inserts its default system prompt), its BOS rule, and llama.cpp's
own tokenizer. All three come from the code the daemon runs (``runtime.templates`` and a
vocabulary-only ``llama_cpp.Llama`` of the same GGUF), not from a second implementation
that might differ in a corner. The answer is followed by the template's end-of-turn token,
the token at which the daemon stops generating; only the answer and that token are
trained on (the prompt's labels are -100).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.distill.base import BaseModel
from appliance.distill.golden import GoldenPair
from appliance.runtime import templates

IGNORE = -100  # the label of a position whose next token is not trained on


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE for the prompt, the token itself for the answer and its end

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class ChatEncoder:
    """Renders and tokenizes chats for one base model, as ``runtime.llama_backend`` does."""

    def __init__(self, base: BaseModel) -> None:
        import llama_cpp

        self._llm: Any = llama_cpp.Llama(model_path=str(base.gguf), vocab_only=True, verbose=False)
        self.template = templates.choose_template(base.chat_template, self._llm.metadata)
        self._vocab = self._llm._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog

    def close(self) -> None:
        self._llm.close()

    def prompt_text(self, messages: Sequence[dict[str, str]]) -> str:
        """The text the daemon renders for these turns (``LlamaText.render_chat``)."""
        return templates.render(self.template, messages)

    def tokenize_prompt(self, text: str) -> list[int]:
        """The daemon's tokenization of a prompt (``LlamaText.tokenize``)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)  # type: ignore[no-any-return]

    def tokenize_text(self, text: str) -> list[int]:
        """Generated text as tokens: no BOS, and special-token names stay plain text."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)  # type: ignore[no-any-return]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens)).decode("utf-8", errors="replace")  # type: ignore[no-any-return]

    def end_of_turn(self, chat: Sequence[dict[str, str]], answer: str) -> int:
        """The token the template puts after an assistant answer that ends generation.

        Found by rendering the conversation with the answer: the first end-of-generation
        token after it (``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma); the
        vocabulary's end-of-sequence token where the template shows none.
        """
        prompt = self.prompt_text(chat)
        full = self.prompt_text([*chat, {"role": "assistant", "content": answer}])
        if full.startswith(prompt) and full[len(prompt) :].startswith(answer):
            rest = full[len(prompt) + len(answer) :]
            for token in self._llm.tokenize(rest.encode("utf-8"), add_bos=False, special=True):
                if self._is_eog(self._vocab, token):
                    return int(token)
        return int(self._llm.token_eos())

    def encode(self, pair: GoldenPair) -> Encoded:
        chat = pair.chat
        answer = pair.answer.strip()  # templates trim turns; the daemon's answers start clean
        prompt = self.tokenize_prompt(self.prompt_text(chat))
        target = [*self.tokenize_text(answer), self.end_of_turn(chat, answer)]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target)
