"""Named model shapes for tests and benchmarks (random weights, nothing to download)."""

from __future__ import annotations

from memagent.model.config import MemoryLLMConfig

TINY = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, num_tokens=8, num_blocks=8,
    tie_word_embeddings=True, eos_token_id=2, pad_token_id=2, bos_token_id=1,
)

SHAPES: dict[str, dict] = {
    "tiny": TINY,
    # tiny with M+'s long-term memory (N = 48 pool tokens, M = 16 recalled per layer): M+ in
    # tests of the service. Recall frequencies neither decay nor prune, so only a bound limits it.
    "tiny-mplus": dict(TINY, long_term=dict(num_ltm_blocks=2, selector_hidden_dim=16, decay_frequency=0.0)),
    # tiny with a long-term memory of whole writes (the default's kind): 2 writes recalled per read.
    "tiny-writes": dict(TINY, long_term=dict(num_ltm_blocks=2, selector_hidden_dim=16, ltm_recall="writes")),
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, num_tokens=64, num_blocks=16,
        rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        tie_word_embeddings=True, eos_token_id=2, pad_token_id=2, bos_token_id=1,
    ),
    # MemoryLLM-8B's shape: Llama-3-8B with K = 256 and a 12,800-token pool per layer.
    "llama3-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_tokens=256, num_blocks=50,
        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        rope_scaling=None, eos_token_id=128001, pad_token_id=128001, bos_token_id=128000,
    ),
}


def shape_config(name: str) -> MemoryLLMConfig:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    return MemoryLLMConfig(**SHAPES[name])
