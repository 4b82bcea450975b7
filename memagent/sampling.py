"""What a generation is asked to do (`SamplingParams`) and what it did (`Usage`).

Plain data without torch, so the same objects travel from an adapter or the gRPC client,
through the service and the store, down to the decode loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

# How a generation ended: an end-of-sequence token or a stop string, the token limit, or the
# caller (cancellation, deadline).
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)  # text ends just before the first of these

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a sequence of strings")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def of(cls, params: SamplingParams | None = None, **options) -> SamplingParams:
        """`params` with `options` (field names) applied over it; unknown names raise TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown sampling options {sorted(unknown)}; known: {', '.join(sorted(known))}")
        base = {f.name: getattr(params, f.name) for f in fields(cls)} if params else {}
        given = {k: v for k, v in options.items() if v is not None}
        if isinstance(given.get("stop"), str):
            given["stop"] = (given["stop"],)
        if "stop" in given:
            given["stop"] = tuple(given["stop"])
        return cls(**(base | given))

    @classmethod
    def for_ask(cls, params: SamplingParams | None = None, **options) -> SamplingParams:
        """Ask's options: a short answer (ASK_DEFAULTS unless `params` is given) that ends at a
        newline unless stop strings are given."""
        params = cls.of(params or ASK_DEFAULTS, **options)
        return params if params.stop else replace(params, stop=ASK_DEFAULTS.stop)

    @classmethod
    def from_framework(
        cls,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> SamplingParams:
        """Parameters as agent frameworks name them; temperature 0 or None is greedy."""
        sampled = bool(temperature)
        return cls.of(
            max_new_tokens=max_tokens,
            do_sample=sampled,
            temperature=temperature if sampled else None,
            stop=tuple(stop or ()),
            top_p=top_p,
            top_k=top_k,
            seed=seed,
        )


ASK_DEFAULTS = SamplingParams(max_new_tokens=32, stop=("\n",))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # one of FINISH_REASONS
    step: int = 0  # the pool's write count the answer was read from

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
