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

The product is a custom op (`memagent::int8_linear`) taking fbgemm's packed weight as an opaque
object, so inductor compiles decode steps around it (`MemoryLLM.compile_decode`): a step's many
small operations fuse and only the int8 products stay calls of their own. Projections of one
input (`FUSED`) share one product, which halves their calls.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch._library.opaque_object import register_opaque_type
from torch._opaque_base import OpaqueBase

SCHEMES = ("int8",)
# Projections of one input that int8 reads fuse into one product (`products`).
FUSED = (("gate_proj", "up_proj"), ("k_proj", "v_proj"))

# Compiled graphs around the int8 products are kept out of inductor's cache: its keys pickle a
# graph's constants, and fbgemm's packed weights do not pickle there.
COMPILE_OPTIONS = {"fx_graph_cache": False}


class PackedInt8(OpaqueBase):
    """fbgemm's packed int8 weight of one linear layer, opaque to torch.compile."""

    def __init__(self, weight: torch.Tensor):
        weight = weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # torch marks its eager quantization API deprecated in favour of torchao, whose int8
            # CPU paths are the slow weight-only kernel or need torch.compile; these kernels are current.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)


register_opaque_type(PackedInt8, typ="reference")


@torch.library.custom_op("memagent::int8_linear", mutates_args=())
def int8_linear(x: torch.Tensor, weight: PackedInt8, out_features: int) -> torch.Tensor:
    """x [..., in] times the int8 `weight` [out_features, in], x quantized per tensor on the fly."""
    return torch.ops.quantized.linear_dynamic(x, weight.packed, True)


@int8_linear.register_fake
def _(x: torch.Tensor, weight: PackedInt8, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


class Int8Product:
    """One int8 product over the weights of linear layers that read one input: a single layer,
    or a layer's gate and up projections, its key and value projections (`FUSED`). Each call of
    a product has a cost of its own (quantizing the input, the call itself), a large part of a
    decode step at batch 1."""

    def __init__(self, linears: list[nn.Linear]):
        self.sizes = [linear.out_features for linear in linears]
        self.weight = PackedInt8(torch.cat([linear.weight for linear in linears]))
        biases = [linear.bias for linear in linears]
        self.bias = None if biases[0] is None else torch.cat(biases).detach()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = per_token_product(x, self.weight, sum(self.sizes))
        y = y if self.bias is None else y + self.bias
        return y.split(self.sizes, dim=-1)


class Int8Linear(nn.Module):
    """Reads through part `part` of an int8 product (by default one of its own); through
    `linear` itself while `use_float`."""

    def __init__(self, linear: nn.Linear, product: Int8Product | None = None, part: int = 0):
        super().__init__()
        self.linear = linear
        self.use_float = False
        self.product = product or Int8Product([linear])
        self.part = part

    @property
    def weight(self) -> torch.Tensor:
        """The float weight (the model's device and dtype are read from it)."""
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_float:
            return self.linear(x)
        return self.product(x)[self.part]


def per_token_product(x: torch.Tensor, weight: PackedInt8, out_features: int) -> torch.Tensor:
    """x [..., in] times the int8 `weight`, each token's activations on a scale of their own.

    fbgemm gives all rows of a product one activation scale, so one token with outlying
    activations (the first token's are large) would cost every other token its precision. Each
    token is scaled to a largest magnitude of 1 first and scaled back after (the product is
    linear); one token (a decode step at batch 1) has its own scale already."""
    if x.numel() == x.shape[-1]:
        return int8_linear(x, weight, out_features)
    scale = x.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    return int8_linear(x / scale, weight, out_features) * scale


def products(x: torch.Tensor, *linears: nn.Module) -> tuple[torch.Tensor, ...]:
    """x through each of `linears`: in one product where `quantize` fused their int8 readers."""
    first = linears[0]
    if isinstance(first, Int8Linear) and not first.use_float:
        parts = [linear.part if getattr(linear, "product", None) is first.product else None for linear in linears]
        if parts == list(range(len(first.product.sizes))):
            return first.product(x)
    return tuple(linear(x) for linear in linears)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


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
        children = dict(module.named_children())
        for group in FUSED:
            linears = [children.get(name) for name in group]
            if all(isinstance(linear, nn.Linear) for linear in linears):
                product = Int8Product(linears)
                for part, (name, linear) in enumerate(zip(group, linears)):
                    setattr(module, name, Int8Linear(linear, product, part))
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model
