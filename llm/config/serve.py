"""Limits and placement of the OpenAI-compatible server (`llm serve`)."""

from __future__ import annotations

from llm.config.base import check, config_class


@config_class
class ServeConfig:
    """What `llm serve` accepts; anything beyond a limit is refused with a 4xx, never cut."""

    host: str = "127.0.0.1"  # interface to listen on (0.0.0.0 exposes it to the network)
    port: int = 8000  # TCP port; 0 picks a free one
    max_concurrent: int = 8  # requests decoded together (KV-cache rows, continuous batching)
    max_queue: int = 64  # requests waiting for a free row; more are refused with 429
    max_prompt_tokens: int = 1024  # longest prompt in tokens (after the chat template)
    max_new_tokens: int = 256  # most tokens one request may ask for (also the default)
    max_body_bytes: int = 1_000_000  # largest request body in bytes
    max_len: int | None = None  # KV-cache slots per row; None = model.max_seq_len
    request_timeout_s: float = 300.0  # a request still unanswered after this many seconds fails
    read_timeout_s: float = 10.0  # seconds to wait for a client's request body

    def __post_init__(self) -> None:
        check(0 <= self.port < 65536, "port", f"must be in [0, 65535], got {self.port}")
        for key in ("max_concurrent", "max_queue", "max_prompt_tokens", "max_new_tokens",
                    "max_body_bytes"):  # fmt: skip
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        check(self.max_len is None or self.max_len > 1, "max_len", "must be > 1 or null")
        check(self.request_timeout_s > 0, "request_timeout_s", "must be positive")
        check(self.read_timeout_s > 0, "read_timeout_s", "must be positive")
