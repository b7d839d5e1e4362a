"""Dense inference passes for an exported CNN: BatchNorm folded into the convolution before
it, and each convolution and 2x2 max-pool run by the faster of two exact kernels.

A shrunk CNN computes the FLOPs of a small model but does not run at its speed: a small
layer's time is its kernel's fixed cost, not its arithmetic (survey section 8).  Measured
on one CPU thread (``benchmarks/granularity.py`` records it): torch's default convolution
(oneDNN) costs about 40 us per call at batch 1 whatever its size, four times what the
im2col kernel (``aten::_slow_conv2d_forward``) takes for a 1->3 channel 5x5 convolution on
a 28x28 image, and its 2x2 max-pool reads an NCHW batch of 64 about nine times slower than
the maximum of the four strided views of the map.  Which kernel wins depends on the shapes,
so :func:`choose_kernels` times both on each layer's real input and keeps the faster.

Every pass is exact up to rounding (the export checks the outputs against the masked
model), leaves the module tree's names as they were (a folded BatchNorm becomes an
``Identity``), and applies to a dense model and its shrunk copy alike, so that a speed-up
measured between them is the shrinking's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import pooling
from .shrink import _set_module

_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every eval-mode BatchNorm that reads only a plain convolution's output into that
    convolution (in place); returns the folded norms' names.

    ``bn(conv(x)) = a * conv(x) + c`` per channel, so ``a`` scales the convolution's rows
    and ``c`` becomes its bias.  The pairs are found by fx tracing; a model fx cannot trace
    is left as it is.  Only ``Conv1d``/``Conv2d`` themselves are folded: a subclass may add
    to its output (shrink's ``OffsetConv2d`` adds what removed channels contributed), and
    the norm would then scale that too.
    """
    if model.training:
        raise ValueError("fold_batchnorm folds running statistics: call model.eval() first")
    # (a submodule left in training mode keeps its norm: see the loop)
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable models keep their norms
        return []
    # a module called more than once is shared by its calls: folding into it would change
    # the calls that are not followed by this norm (or fold one norm twice)
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _NORMS):
            continue
        source = node.args[0]
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and type(model.get_submodule(source.target)) in _PLAIN_CONVS
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1
        ):
            continue
        conv, norm = model.get_submodule(source.target), model.get_submodule(node.target)
        if norm.running_mean is None or norm.training or conv.training:
            continue  # batch statistics (no running ones, or a norm left training) stay
        _set_module(model, source.target, fuse_conv_bn_eval(conv, norm))
        _set_module(model, node.target, nn.Identity())
        folded.append(node.target)
    return folded


class Im2colConv2d(nn.Conv2d):
    """A ``Conv2d`` computed by torch's im2col-and-matrix-product kernel instead of oneDNN:
    the same result up to rounding, without oneDNN's fixed cost per call."""

    def _conv_forward(self, input, weight, bias):  # torch's names
        unbatched = input.dim() == 3  # (C, H, W), which nn.Conv2d accepts too
        out = torch.ops.aten._slow_conv2d_forward(
            input.unsqueeze(0) if unbatched else input,
            weight,
            self.kernel_size,
            bias,
            self.stride,
            self.padding,
        )
        return out.squeeze(0) if unbatched else out


class StridedMaxPool2d(nn.MaxPool2d):
    """A 2x2, stride-2 max-pool as the elementwise maximum of the four strided views of its
    input, where its height and width are even (then ``ceil_mode`` changes nothing); any
    other input goes to torch's pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            return super().forward(x)
        return pooling.strided_maximum(x)[0]


def _im2col_fits(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _strided_fits(pool: nn.Module) -> bool:
    return (
        type(pool) in (nn.MaxPool2d, pooling.MaxPool2x2)  # the latter switches by size
        and _pair(pool.kernel_size) == (2, 2)
        and _pair(pool.stride) == (2, 2)
        and _pair(pool.padding) == (0, 0)
        and _pair(pool.dilation) == (1, 1)
        and not pool.return_indices
    )


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _im2col_twin(conv: nn.Conv2d) -> Im2colConv2d:
    twin = Im2colConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
        device="meta",
    )
    twin.weight, twin.bias = conv.weight, conv.bias  # the same tensors, no copy
    return twin


def _strided_twin(pool: nn.MaxPool2d) -> StridedMaxPool2d:
    return StridedMaxPool2d(2, 2, ceil_mode=pool.ceil_mode)


#: The alternative kernel of each layer type, and whether a layer can take it.
ALTERNATIVES: dict[str, tuple[Callable[[nn.Module], bool], Callable[[Any], nn.Module]]] = {
    "im2col": (_im2col_fits, _im2col_twin),
    "strided_max": (_strided_fits, _strided_twin),
}


def choose_kernels(
    model: nn.Module,
    example: torch.Tensor,
    timer: Callable[[dict[str, Callable[[], Any]]], dict[str, float]],
    margin: float = 0.9,
) -> dict[str, dict[str, Any]]:
    """Give each convolution and 2x2 max-pool of ``model`` the faster of its two kernels on
    its real input (in place); returns ``{name: {kernel, default_s, alternative_s}}`` for
    every layer timed.

    ``timer`` times a dict of calls (:func:`sparsity_lab.accel.time_interleaved`).  The
    alternative replaces the layer only when it takes at most ``margin`` of the default's
    time, so that timing noise alone never changes a kernel.
    """
    candidates = {
        name: kernel
        for name, module in model.named_modules()
        for kernel, (fits, _) in ALTERNATIVES.items()
        if name and fits(module)
    }
    inputs = layer_inputs(model, example, list(candidates))
    chosen = {}
    for name, kernel in candidates.items():
        if name not in inputs:  # never called on this input
            continue
        module, x = model.get_submodule(name), inputs[name]
        twin = ALTERNATIVES[kernel][1](module)
        with torch.no_grad():
            times = timer({"default": lambda m=module, x=x: m(x), kernel: lambda m=twin, x=x: m(x)})
            exact = torch.allclose(twin(x), module(x), rtol=1e-4, atol=1e-5)
        keep = exact and times[kernel] <= margin * times["default"]
        if keep:
            _set_module(model, name, twin)
        chosen[name] = {
            "kernel": kernel if keep else "default",
            "default_s": times["default"],
            "alternative_s": times[kernel],
        }
    return chosen


def apply_kernels(model: nn.Module, chosen: dict[str, dict[str, Any]]) -> None:
    """Give ``model`` the kernels :func:`choose_kernels` chose for a model of the same
    layers (in place), without timing again."""
    for name, choice in chosen.items():
        if choice["kernel"] != "default":
            module = model.get_submodule(name)
            fits, twin = ALTERNATIVES[choice["kernel"]]
            if not fits(module):
                raise ValueError(
                    f"{name!r} is a {type(module).__name__}, which cannot take the "
                    f"{choice['kernel']!r} kernel chosen for another model's layer; apply "
                    "the choices of a model with the same layers"
                )
            _set_module(model, name, twin(module))


def layer_inputs(model: nn.Module, example: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """The input each named module receives on ``example`` (its first call's); a module
    the forward pass never calls is absent."""
    found: dict[str, Any] = {}

    def keep_first(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple) -> None:  # returning a value replaces args
            found.setdefault(name, args[0].detach())

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep_first(n)) for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return found


__all__ = [
    "ALTERNATIVES",
    "Im2colConv2d",
    "StridedMaxPool2d",
    "apply_kernels",
    "choose_kernels",
    "fold_batchnorm",
    "layer_inputs",
]
