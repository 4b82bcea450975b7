"""A tiny model that answers every question with "I don't know.": the real code path of an
abstention, from the decode loop up through the service, without a trained adapter."""

from __future__ import annotations

import torch

import memagent
from memagent.abstention import ABSTENTION


def abstaining_engine() -> memagent.Engine:
    """Random `tiny` weights cut down to a bigram model (no layer adds to the residual stream,
    so each next token depends on the current one only), whose output layer chains the end of
    the question prompt into "I don't know." and a newline, where ask stops."""
    engine = memagent.load("random:tiny")
    model, encode = engine.model, engine.encode
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        chain = [encode(engine.question_prompt("?"))[-1], *encode(ABSTENTION), *encode("\n")]
        states = model.model.norm(model.model.embed_tokens.weight[chain])
        head = torch.zeros_like(model.lm_head.weight)
        for state, next_token in zip(states, chain[1:]):
            head[next_token] += 50 * state / state.norm() ** 2
        model.lm_head.weight = torch.nn.Parameter(head)
    return engine
