"""Int8 reads on the CPU: every linear layer of the read path multiplies with int8 weights.

A decode step on the CPU is bound by the bytes of weights it streams from memory; int8 weights
are a quarter of float32's. The products are fbgemm's dynamically quantized ones (weights int8
per output channel, symmetric; each step's activations quantized per tensor on the fly), the
fastest int8 kernels torch has on the CPU: `_weight_int8pack_mm` (weight-only int8) runs
several times slower than float32 there.

Writes keep the float weights: a layer wraps its float `nn.Linear` (or `LoRALinear`) and uses
it inside `float_weights` (which `memagent.model.lora.writing` enters), so the memory a write
produces, and so every pool and its fingerprint, is exactly the float model's. Quantization is
a choice of read speed only. The memory prefix's keys/values are computed with the float
weights too: a long batch of tokens, bound by arithmetic rather than bytes, and done once per
pool version, so a pool's prefix is the same in either model.

Activations are quantized per token (see `Int8Linear.forward`); the zero point of the int8
activations is still shared by a product's rows, so a row's logits can depend slightly on the
other rows of its batch (float reads do not).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

SCHEMES = ("int8",)

with warnings.catch_warnings():
    # torch marks its eager quantization API deprecated in favour of torchao, whose int8 CPU
    # paths are the slow weight-only kernel or need torch.compile; these kernels are current.
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear


class Int8Linear(nn.Module):
    """Reads through an int8 copy of `linear`'s weight; through `linear` itself while `use_float`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.use_float = False
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the same deprecation, as a warning
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        self.int8 = DynamicInt8Linear(linear.in_features, linear.out_features, bias_=False)
        self.int8.set_weight_bias(qweight, None)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight (the model's device and dtype are read from it)."""
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_float:
            return self.linear(x)
        # fbgemm gives all rows of a product one activation scale, so one token with outlying
        # activations (the first token's are large) would cost every other token its precision.
        # Each token is scaled to a largest magnitude of 1 first and scaled back after: in effect
        # a scale per token (the product is linear).
        scale = x.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
        y = self.int8(x / scale) * scale
        return y if self.linear.bias is None else y + self.linear.bias


@contextlib.contextmanager
def float_weights(model: nn.Module) -> Iterator[None]:
    """Run every int8 reader of `model` on its float weights for the duration."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    for layer in layers:
        layer.use_float = True
    try:
        yield
    finally:
        for layer in layers:
            layer.use_float = False


def quantize(model: nn.Module, scheme: str) -> nn.Module:
    """Swap every nn.Linear of `model` (a float32 model on the CPU) for its `scheme` reader, in place.

    The embedding table stays float (a lookup reads one row); a tied `lm_head` gets its own
    int8 copy.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; known: {', '.join(SCHEMES)}")
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise ValueError(
            f"int8 reads run on the CPU from float32 weights; this model is {parameter.dtype} on {parameter.device}"
        )
    for module in list(model.modules()):
        if isinstance(module, Int8Linear):  # quantized already
            continue
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model
