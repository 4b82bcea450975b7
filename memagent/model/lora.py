"""Linear layers carrying the released format's two LoRA adapters, without peft.

The read path is the hot one (every decoded token), so the read adapter is merged into the
weight and reads cost exactly a plain linear layer. Writes run the write adapter by adding the
low-rank difference (write delta minus read delta) at run time: two rank-r products, no
second copy of the weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from memagent.model.quantized import float_weights


class LoRALinear(nn.Linear):
    """A linear layer whose weight already holds the read adapter.

    `write_A`/`write_B` hold the stacked low-rank factors of (write delta - read delta); they
    apply only while `writing` is set.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, write_A: torch.Tensor, write_B: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.bias = nn.Parameter(bias, requires_grad=False)
        self.register_buffer("write_A", write_A)
        self.register_buffer("write_B", write_B)
        self.writing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.writing:
            y = y + (x @ self.write_A.T) @ self.write_B.T
        return y


def build_lora_linear(
    base: torch.Tensor,
    bias: torch.Tensor | None,
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    read_adapter: str | None,
    write_adapter: str | None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LoRALinear:
    """`adapters` maps a name to (A [r, in], B [out, r]); None means no adapter on that path.

    The read adapter is merged in float32 and the sum rounded once to `dtype` (default: the
    base's); the write factors are stored in that dtype, everything on `device`.
    """
    dtype = dtype or base.dtype
    device = device or base.device

    def factors(name: str | None, sign: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if name is None:
            return []
        A, B = adapters[name]
        return [(A.to(device, torch.float32), B.to(device, torch.float32) * (scale * sign))]

    weight = base.to(device, torch.float32)
    for A, B in factors(read_adapter, 1.0):
        weight = weight + B @ A
    weight = weight.to(dtype)
    parts = [] if read_adapter == write_adapter else factors(write_adapter, 1.0) + factors(read_adapter, -1.0)
    if parts:
        write_A = torch.cat([A for A, _ in parts], dim=0)
        write_B = torch.cat([B for _, B in parts], dim=1)
    else:
        write_A = weight.new_zeros(0, base.shape[1])
        write_B = weight.new_zeros(base.shape[0], 0)
    return LoRALinear(weight, bias, write_A.to(dtype).contiguous(), write_B.to(dtype).contiguous())


@contextlib.contextmanager
def writing(model: nn.Module) -> Iterator[None]:
    """Switch every LoRALinear in `model` to the write adapter, and every int8 reader to its
    float weights, for the duration: writes compute exactly what the float model does."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and m.write_A.shape[0]]
    for layer in layers:
        layer.writing = True
    try:
        with float_weights(model):
            yield
    finally:
        for layer in layers:
            layer.writing = False
