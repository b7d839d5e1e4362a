"""The dropout family seen as ephemeral sparsity: random zeros, new at every step.

Each method zeros a random part of the network for one training step and uses the whole
network at inference (survey sections 2.3, 5 and 6):

==================  ===================  ===================================================
name                paper                what is zeroed, per step
==================  ===================  ===================================================
dropout             Srivastava 2014      single activations
dropconnect         Wan 2013             single weights
dropblock           Ghiasi 2018          contiguous square (or 1-D) regions of feature maps
stochastic_depth    Huang 2016           whole residual branches, deeper ones more often
layerdrop           Fan 2020             whole layers; also prunes layers at inference
==================  ===================  ===================================================

They drop into the bundled models without editing them: :func:`add_to_outputs` applies
a module to the output of named layers (dropout, DropBlock), :func:`dropconnect` puts a
parametrization on weights, and :class:`StochasticDepth` / :class:`LayerDrop` gate the
residual branches that :func:`sparsity_lab.shrink.structure` finds.  All are identities
in eval mode (LayerDrop's pruned layers excepted).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import models
from ..registry import register
from ..shrink import structure
from .activation_functions import SparseActivation

__all__ = [
    "Dropout",
    "DropConnect",
    "dropconnect",
    "DropBlock",
    "add_to_outputs",
    "OutputHooks",
    "zeroed_share",
    "BranchGates",
    "StochasticDepth",
    "LayerDrop",
    "every_other",
    "SkippedBlock",
    "drop_layers",
]


def _check_p(p: float, what: str = "p") -> float:
    if not 0 <= p < 1:
        raise ValueError(f"{what} must be in [0, 1) (the probability of dropping), got {p!r}")
    return float(p)


@register("ephemeral", "dropout", section="5")
class Dropout(SparseActivation):
    """Dropout (Srivastava 2014): zero each activation with probability ``p`` while training.

    Rule: ``y = m * x / (1 - p)``, ``m_i ~ Bernoulli(1 - p)`` independently per entry and
    per step; ``y = x`` in eval mode.  Dividing by ``1 - p`` during training (inverted
    dropout) equals the paper's scaling of the weights by ``1 - p`` at test time.
    Element-wise, any layer's output.  Counts the zeros it outputs (see
    :class:`~.activation_functions.SparseActivation`).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _check_p(p)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@register("ephemeral", "dropconnect", section="5")
class DropConnect(nn.Module):
    """DropConnect (Wan 2013): zero each *weight* with probability ``p`` while training.

    Rule: ``W' = M * W / (1 - p)``, ``M_ij ~ Bernoulli(1 - p)``, redrawn at every forward
    pass in training mode; ``W' = W`` in eval mode.  A parametrization (install it with
    :func:`dropconnect`).  One mask per batch, not per example as in the paper (which
    costs a weight matrix per example), and inverted scaling instead of the paper's
    Gaussian moment matching at inference.  Any weight tensor.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _check_p(p)
        self.last_mask: torch.Tensor | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return w
        keep = torch.rand_like(w) >= self.p
        self.last_mask = keep
        return w * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _Removable:
    def __init__(self, undo) -> None:
        self._undo = undo

    def remove(self) -> None:
        """Undo what was installed."""
        for fn in self._undo:
            fn()
        self._undo = []


def dropconnect(model: nn.Module, p: float = 0.5, names: Iterable[str] | None = None):
    """Install :class:`DropConnect` on weights ``names`` (default: every Linear weight).

    Returns a handle whose ``remove()`` takes the parametrizations off again (the weights
    are unchanged: DropConnect never writes to them).  Remove it before
    :func:`sparsity_lab.shrink.shrink`, which accepts only mask parametrizations.
    """
    if names is None:
        names = [
            f"{path}.weight" if path else "weight"
            for path, m in model.named_modules()
            if isinstance(m, nn.Linear)
        ]
    undo = []
    for name in names:
        path, _, tensor = name.rpartition(".")
        module = model.get_submodule(path)
        if not isinstance(getattr(module, tensor, None), torch.Tensor):
            raise KeyError(f"{name!r} is not a tensor of the model; see model.named_parameters()")
        parametrize.register_parametrization(module, tensor, DropConnect(p), unsafe=True)
        undo.append(
            lambda module=module, tensor=tensor: parametrize.remove_parametrizations(
                module, tensor, leave_parametrized=False
            )
        )
    return _Removable(undo)


@register("ephemeral", "dropblock", section="5")
class DropBlock(SparseActivation):
    """DropBlock (Ghiasi 2018): drop contiguous ``block_size`` regions of feature maps.

    Rule, for a map of side ``s`` (per example and channel): block centres are drawn with
    ``gamma = p / b**d * s**d / (s - b + 1)**d`` (``b`` = ``block_size``, ``d`` = 1 or 2
    spatial dimensions) where a whole block fits, each centre zeros the ``b``-wide block
    around it, and the survivors are rescaled by ``count / count_kept`` so the mean
    activation is kept.  ``gamma`` makes the expected dropped fraction about ``p``.
    Identity in eval mode.  Inputs ``(N, C, L)`` or ``(N, C, H, W)``; one mask per
    channel.  Use an odd ``block_size`` so the block is centred.
    """

    def __init__(self, p: float = 0.1, block_size: int = 3) -> None:
        super().__init__()
        self.p = _check_p(p)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        if block_size % 2 == 0:
            raise ValueError(f"block_size must be odd so blocks are centred, got {block_size}")
        self.block_size = block_size

    def block_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A keep-mask (1.0 kept, 0.0 dropped) for ``x`` of shape (N, C, *spatial)."""
        spatial = x.shape[2:]
        if len(spatial) not in (1, 2):
            raise ValueError(
                f"DropBlock expects (N, C, L) or (N, C, H, W) feature maps, got {tuple(x.shape)}"
            )
        b = min(self.block_size, *spatial)
        d = len(spatial)
        area = 1.0
        for s in spatial:
            area *= s / (s - b + 1)
        gamma = self.p / b**d * area
        # centres only where the block fits entirely inside the map (Ghiasi et al. Alg. 1)
        valid = [s - b + 1 for s in spatial]
        seeds = (torch.rand(*x.shape[:2], *valid, device=x.device) < gamma).to(x.dtype)
        half = b // 2
        pad = []
        for s, v in zip(reversed(spatial), reversed(valid), strict=True):
            pad += [half, s - v - half]
        seeds = F.pad(seeds, pad)
        pool = F.max_pool1d if d == 1 else F.max_pool2d
        dropped = pool(seeds, kernel_size=b, stride=1, padding=half)
        return 1.0 - dropped

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = self.block_mask(x)
        kept = keep.sum()
        return x * keep * (keep.numel() / kept.clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"


class OutputHooks(_Removable):
    """Handle of :func:`add_to_outputs`: the modules applied, and ``remove()``."""

    def __init__(self, modules: dict[str, nn.Module], handles: list) -> None:
        super().__init__([h.remove for h in handles])
        self.modules = modules


def add_to_outputs(model: nn.Module, layers: Iterable[str], make) -> OutputHooks:
    """Apply ``make()`` (a fresh module per layer) to the output of each layer in ``layers``.

    For example ``add_to_outputs(model, ["fc1", "fc2"], lambda: Dropout(0.5))`` drops
    units of LeNet-300-100's hidden layers: before the ReLU, which is the same as after it
    because a ReLU commutes with zeroing and with a positive scale.  The added modules
    follow ``model.train()`` / ``model.eval()`` only if they are registered in the model,
    so their training flag is synced from the layer at every call.  Returns a handle
    with the modules by layer name and ``remove()``.
    """
    added: dict[str, nn.Module] = {}
    handles = []
    for name in layers:
        layer = model.get_submodule(name)
        module = make()
        if not isinstance(module, nn.Module):
            raise TypeError(f"make() must return an nn.Module, got {type(module).__name__}")
        added[name] = module

        def hook(mod, args, out, module=module):
            module.train(mod.training)
            return module(out)

        handles.append(layer.register_forward_hook(hook))
    return OutputHooks(added, handles)


def zeroed_share(
    model: nn.Module, layers: Iterable[str], make, x: torch.Tensor, steps: int = 1
) -> float:
    """The share of the outputs of ``layers`` that the modules ``make()`` zero over ``steps``
    forward passes of ``x``: how much dropout or DropBlock really drops, to set beside the
    rate its rule implies.

    The modules are added with :func:`add_to_outputs` and taken off again; they must count
    their zeros as :class:`~.activation_functions.SparseActivation` does.  The model runs in
    the mode it is in: put it in training mode to see anything dropped.
    """
    hooks = add_to_outputs(model, layers, make)
    try:
        for _ in range(steps):
            model(x)
    finally:
        hooks.remove()
    modules = hooks.modules.values()
    return sum(m.zeros for m in modules) / sum(m.activations for m in modules)


# ------------------------------------------------------------------------ residual branches


class BranchGates(_Removable):
    """Gates on the residual branches of a model: ``block(x) = x + gate * branch(x)``.

    The blocks and their branches come from :func:`sparsity_lab.shrink.structure` (the
    bundled residual models: resmlp, resnet_small, tiny_transformer); a transformer block's
    attention and MLP branches share one gate, so a gate drops a whole layer.  A gate is
    drawn once per forward pass of its block (:meth:`train_gate`), or fixed in eval mode
    (:meth:`eval_gate`); ``dropped`` blocks have gate 0 in eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        found = structure(model)
        self.blocks: list[str] = list(dict.fromkeys(b.path for b in found.branches))
        if not self.blocks:
            raise ValueError(
                f"{type(model).__name__} has no residual blocks to gate; use resmlp, "
                f"resnet_small or tiny_transformer"
            )
        self.model = model
        self.dropped: set[str] = set()
        self.gates: dict[str, float] = {}
        self.drops = {b: 0 for b in self.blocks}  # times each block was dropped in training
        handles = []
        for depth, path in enumerate(self.blocks, start=1):
            block = model.get_submodule(path)
            handles.append(block.register_forward_pre_hook(self._draw(path, depth)))
        for branch in found.branches:
            out = model.get_submodule(branch.output)
            handles.append(out.register_forward_hook(self._apply(branch.path)))
        super().__init__([h.remove for h in handles])

    def train_gate(self, depth: int) -> float:
        """The gate of the block at ``depth`` (1-based) for one training step."""
        raise NotImplementedError

    def eval_gate(self, depth: int) -> float:
        """The gate of the block at ``depth`` in eval mode."""
        return 1.0

    def _draw(self, path: str, depth: int):
        def hook(block, args):
            if path in self.dropped and not block.training:
                self.gates[path] = 0.0
            elif block.training:
                self.gates[path] = self.train_gate(depth)
                self.drops[path] += self.gates[path] == 0.0
            else:
                self.gates[path] = self.eval_gate(depth)

        hook._branch_gate = True  # lets drop_layers strip the hooks from a copy
        return hook

    def _apply(self, path: str):
        def hook(module, args, out):
            gate = self.gates.get(path, 1.0)
            return out if gate == 1.0 else out * gate

        hook._branch_gate = True
        return hook


@register("ephemeral", "stochastic_depth", section="5")
class StochasticDepth(BranchGates):
    """Stochastic depth (Huang 2016): skip whole residual branches at random while training.

    Rule: block ``l`` of ``L`` survives with probability ``p_l = 1 - l / L * (1 - p_L)``
    (linear decay, ``p_L = 1 - p_last``); training: ``x + b f(x)``, ``b ~ Bernoulli(p_l)``;
    inference: ``x + p_l f(x)``, the expected branch.  Residual blocks of resmlp,
    resnet_small and tiny_transformer (both sublayers of a block share the gate).
    """

    def __init__(self, model: nn.Module, p_last: float = 0.5) -> None:
        self.p_last = _check_p(p_last, "p_last")
        super().__init__(model)

    def survival(self, depth: int) -> float:
        """``p_l`` of the block at ``depth`` (1-based)."""
        return 1.0 - depth / len(self.blocks) * self.p_last

    def train_gate(self, depth: int) -> float:
        return float(torch.rand(()) < self.survival(depth))

    def eval_gate(self, depth: int) -> float:
        return self.survival(depth)


def every_other(n_layers: int, p: float) -> list[int]:
    """LayerDrop's pruning rule (Fan 2020): depths ``d`` (1-based) with ``d % floor(1/p) == 0``.

    ``p = 0.5`` drops every second layer; ``p = 0.25`` every fourth.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    step = int(1 / p)
    return [d for d in range(1, n_layers + 1) if d % step == 0]


@register("ephemeral", "layerdrop", section="5")
class LayerDrop(BranchGates):
    """LayerDrop (Fan 2020): drop each layer with probability ``p`` while training; prune later.

    Rule: training: ``x + b f(x)``, ``b ~ Bernoulli(1 - p)``, the same ``p`` for every
    layer and no rescaling; inference: ``x + f(x)`` for kept layers and ``x`` for pruned
    ones.  :meth:`prune` chooses layers to drop at inference with :func:`every_other` (or
    by name); :func:`drop_layers` then removes them from a copy of the model.  Residual
    blocks of resmlp, resnet_small and tiny_transformer.
    """

    def __init__(self, model: nn.Module, p: float = 0.2) -> None:
        self.p = _check_p(p)
        super().__init__(model)

    def train_gate(self, depth: int) -> float:
        return float(torch.rand(()) >= self.p)

    def prune(self, p: float | None = None, layers: Iterable[str] | None = None) -> list[str]:
        """Drop layers at inference: ``layers`` by path, or :func:`every_other` at rate ``p``.

        Returns the paths of the dropped layers (they stay dropped until changed again).
        """
        if layers is not None:
            unknown = set(layers) - set(self.blocks)
            if unknown:
                raise ValueError(f"unknown layers {sorted(unknown)}; layers are {self.blocks}")
            chosen = list(layers)
        else:
            chosen = [self.blocks[d - 1] for d in every_other(len(self.blocks), p or self.p)]
        self.dropped = set(chosen)
        return chosen


class SkippedBlock(nn.Module):
    """A residual block whose branch is gone: what the block computes with ``f(x) = 0``.

    ``relu(x)`` for a residual MLP block, ``relu(shortcut(x))`` for a ResNet basic block,
    ``x`` for a transformer block.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if isinstance(block, models.BasicBlock):
            self.shortcut = block.shortcut
            self.kind = "basic"
        elif isinstance(block, models.ResidualMLPBlock):
            self.kind = "mlp"
        elif isinstance(block, models.TransformerBlock):
            self.kind = "transformer"
        else:
            raise TypeError(f"SkippedBlock does not know {type(block).__name__}")

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None):
        if self.kind == "basic":
            return F.relu(self.shortcut(x))
        if self.kind == "mlp":
            return F.relu(x)
        return x


def drop_layers(model: nn.Module, layers: Iterable[str]) -> nn.Module:
    """A copy of ``model`` with the residual blocks ``layers`` replaced by :class:`SkippedBlock`.

    The copy has fewer parameters and computes exactly what the gated model computes with
    those layers' gates at 0.  Gates installed on ``model`` (:class:`BranchGates`) are not
    carried over to the copy.  ``model`` is unchanged.
    """
    work = copy.deepcopy(model)
    for module in work.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, fn in hooks.items() if getattr(fn, "_branch_gate", False)]:
                del hooks[key]
    for path in layers:
        parent, _, child = path.rpartition(".")
        holder = work.get_submodule(parent) if parent else work
        setattr(holder, child, SkippedBlock(work.get_submodule(path)))
    return work
