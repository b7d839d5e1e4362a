"""An exact 2x2, stride-2 max-pool that is fast on CPU, for training as well as inference.

Torch's CPU max-pool scans each window element by element: on one thread, an NCHW batch of
64 LeNet-5 feature maps (64x6x28x28) takes about 1.5 ms forward, a quarter of a LeNet-5
training step, where the elementwise maximum of the map's four strided views takes
0.16 ms.  :class:`MaxPool2x2` computes its forward that way and, when a gradient is
needed, also the index of each window's maximum in torch's own layout (row-major within
the map, the first of equal maxima), then hands the backward to torch's own
``max_pool2d_with_indices_backward``.  Outputs, indices and gradients are therefore
torch's, bit for bit, for finite inputs (where a window holds NaN, the output is NaN as in
torch, but the gradient may go to another element of that window); the speed-up changes
no number a model computes.  ``benchmarks/pooling_speed.py`` measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

#: Below these many input elements torch's kernel is as fast, its one call against the
#: strided kernel's several (measured on one thread: a 1x6x28x28 map pools in 11 us there,
#: 18 us as strided maxima; with the indices and the backward, torch's kernel is as fast up
#: to about 75,000 elements).
MIN_ELEMENTS = 16_384
MIN_ELEMENTS_GRAD = 131_072


def strided_maximum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window maxima, and the maxima of each window's top and bottom rows."""
    top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
    bottom = torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2])
    return torch.maximum(top, bottom), top, bottom


class _MaxPool2x2(torch.autograd.Function):
    """Forward as strided maxima plus torch-layout indices; torch's backward on them."""

    generate_vmap_rule = True  # torch.func (per-example gradients, Hessian products)

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, top, bottom = strided_maximum(x)
        width = x.shape[-1]
        rows = torch.arange(0, x.shape[-2], 2, device=x.device) * width
        base = rows[:, None] + torch.arange(0, width, 2, device=x.device)
        # torch scans a window row by row and takes a later element only where it is
        # strictly larger: the bottom row where its maximum beats the top's, and in the row
        # taken, the right element where it beats the left one
        lower = bottom > top
        right = (lower & (x[..., 1::2, 1::2] > x[..., 1::2, 0::2])) | (
            ~lower & (x[..., 0::2, 1::2] > x[..., 0::2, 0::2])
        )
        return y, base + lower * width + right

    @staticmethod
    def setup_context(ctx, inputs, output):  # torch's signature
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, grad, _):  # torch's signature
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


@fx.wrap  # traced as one call (fx cannot follow the shape test), which shrink knows
def max_pool_2x2(x: torch.Tensor, ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d(x, 2, ceil_mode=ceil_mode)``, exactly, faster on large CPU inputs.

    Inputs of even height and width on the CPU with at least :data:`MIN_ELEMENTS` elements
    (:data:`MIN_ELEMENTS_GRAD` where a gradient is needed) take the strided kernel, where
    ``ceil_mode`` changes nothing; any other input takes torch's, and so does a graph
    traced by ``torch.export`` or ``torch.compile`` (the choice by size would tie the graph
    to a batch size, and the compiler has its own kernels).
    """
    grad = torch.is_grad_enabled() and x.requires_grad
    if (
        torch.compiler.is_compiling()  # torch.export, torch.compile: one op, no size guard
        or x.numel() < (MIN_ELEMENTS_GRAD if grad else MIN_ELEMENTS)
        or x.device.type != "cpu"
        or x.dim() not in (3, 4)
        or x.shape[-1] % 2
        or x.shape[-2] % 2
    ):
        return F.max_pool2d(x, 2, ceil_mode=ceil_mode)
    return _MaxPool2x2.apply(x)[0] if grad else strided_maximum(x)[0]


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2, ceil_mode=ceil_mode)`` computed by :func:`max_pool_2x2`."""

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__(2, ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x, self.ceil_mode)
