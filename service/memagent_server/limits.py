"""Request limits, checked before any work; each violation says which limit and its value, and
quotes at most a short prefix of what it was given."""

from __future__ import annotations

from dataclasses import dataclass

from memagent.sampling import SamplingParams
from memagent.store import NewText
from memagent.store.errors import quote
from memagent.v1 import memagent_pb2 as pb

ROLES = ("system", "user", "assistant")


class LimitExceeded(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    max_text_bytes: int = 256 * 1024
    max_texts_per_request: int = 1024
    max_metadata_entries: int = 64
    max_source_bytes: int = 1024
    max_metadata_key_bytes: int = 256
    max_metadata_value_bytes: int = 4096
    max_request_id_bytes: int = 128
    max_entry_ids: int = 10_000  # per Forget
    max_page_token_bytes: int = 256
    max_prompt_bytes: int = 64 * 1024
    max_new_tokens: int = 2048
    max_stop_strings: int = 16
    max_stop_string_bytes: int = 256
    max_messages: int = 256
    max_page_size: int = 1000
    default_page_size: int = 100
    max_state_bytes: int = 4 << 30

    def text(self, text: pb.Text, where: str = "text") -> NewText:
        if not text.text.strip():
            raise ValueError(f"{where} is empty")
        size = len(text.text.encode())
        if size > self.max_text_bytes:
            raise LimitExceeded(f"{where} is {size} bytes; the limit is max_text_bytes={self.max_text_bytes}")
        if len(text.metadata) > self.max_metadata_entries:
            raise LimitExceeded(
                f"{where} has {len(text.metadata)} metadata entries; "
                f"the limit is max_metadata_entries={self.max_metadata_entries}"
            )
        _size(text.source, self.max_source_bytes, "max_source_bytes", f"{where}.source")
        for key, value in text.metadata.items():
            _size(key, self.max_metadata_key_bytes, "max_metadata_key_bytes", f"{where}.metadata key")
            _size(value, self.max_metadata_value_bytes, "max_metadata_value_bytes", f"{where}.metadata[{quote(key)}]")
        return NewText(text.text, text.source, dict(text.metadata))

    def request_id(self, request_id: str) -> str:
        return _size(request_id, self.max_request_id_bytes, "max_request_id_bytes", "request_id")

    def entry_ids(self, entry_ids) -> list[int]:
        if len(entry_ids) > self.max_entry_ids:
            raise LimitExceeded(f"{len(entry_ids)} entry ids; the limit is max_entry_ids={self.max_entry_ids}")
        return list(entry_ids)

    def page_token(self, token: str) -> str:
        return _size(token, self.max_page_token_bytes, "max_page_token_bytes", "page_token")

    def texts(self, texts) -> list[NewText]:
        if not texts:
            raise ValueError("no texts given")
        if len(texts) > self.max_texts_per_request:
            raise LimitExceeded(
                f"{len(texts)} texts in one request; the limit is max_texts_per_request={self.max_texts_per_request}"
            )
        return [self.text(t, f"texts[{i}]") for i, t in enumerate(texts)]

    def prompt(self, prompt: str, what: str = "prompt") -> str:
        if not prompt.strip():
            raise ValueError(f"{what} is empty")
        size = len(prompt.encode())
        if size > self.max_prompt_bytes:
            raise LimitExceeded(f"{what} is {size} bytes; the limit is max_prompt_bytes={self.max_prompt_bytes}")
        return prompt

    def messages(self, messages) -> list[dict[str, str]]:
        if not messages:
            raise ValueError("no messages given")
        if len(messages) > self.max_messages:
            raise LimitExceeded(f"{len(messages)} messages; the limit is max_messages={self.max_messages}")
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                raise ValueError(f"messages[{i}].role is {quote(m.role)}; expected one of {', '.join(ROLES)}")
        self.prompt("".join(m.content for m in messages), "the messages' content")
        return [{"role": m.role, "content": m.content} for m in messages]

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """`params` if within this server's limits (SamplingParams checks the values themselves)."""
        if params.max_new_tokens > self.max_new_tokens:
            raise LimitExceeded(
                f"max_new_tokens is {params.max_new_tokens}; it must be from 1 to {self.max_new_tokens}"
            )
        if len(params.stop) > self.max_stop_strings:
            raise LimitExceeded(
                f"{len(params.stop)} stop strings; the limit is max_stop_strings={self.max_stop_strings}"
            )
        for i, stop in enumerate(params.stop):
            _size(stop, self.max_stop_string_bytes, "max_stop_string_bytes", f"stop[{i}]")
        return params

    def page_size(self, requested: int) -> int:
        if requested > self.max_page_size:
            raise LimitExceeded(f"page_size is {requested}; the limit is max_page_size={self.max_page_size}")
        return requested or self.default_page_size


def _size(value: str, limit: int, name: str, what: str) -> str:
    size = len(value.encode())
    if size > limit:
        raise LimitExceeded(f"{what} is {size} bytes; the limit is {name}={limit}")
    return value
