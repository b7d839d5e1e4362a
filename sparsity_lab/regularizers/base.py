"""The regularizer protocol: sparsity from a loss term or a reparameterised layer.

A regularizer is a :class:`~sparsity_lab.train.Callback`.  Its life has four stages::

    reg = sparsity_lab.registry.get("l1")(sparsity=0.9)
    history = reg.fit(model, train_loader, val_loader, epochs=8, optimizer="adam", lr=1e-3)
    reg.reached                   # what the method's own threshold rule gave
    sparsity_lab.sparsity(model)  # 0.9: the masks attached at the end

1. :meth:`Regularizer.prepare` changes the model where the method needs it: it adds gates,
   thresholds or noise parameters to the layers (``torch.nn.utils.parametrize`` or a small
   module with a forward hook), before the optimizer is built so that they are trained.
2. During training :meth:`~Regularizer.penalty` is added to the loss (its gradient is added
   in ``on_after_backward``, as if the loss had been ``loss + strength * penalty``), and
   :meth:`~Regularizer.after_step` applies what acts on the weights directly (proximal
   steps, ADMM's dual updates, clamping).
3. :meth:`~Regularizer.finalize` (run at ``on_train_end``) chooses a keep-mask per tensor,
   folds every reparameterisation back into a plain weight and attaches the masks with
   :func:`sparsity_lab.masks.attach`.  From then on the model is an ordinary masked model:
   fine-tune it, report it, shrink it.
4. ``reached`` is the sparsity the method's own threshold rule gave and ``layer_sparsity``
   its per-layer budget; ``sparsity_lab.sparsity(model)`` is what the model has.

**The threshold rule and the target.**  Each method documents the rule that turns its
trained state into a mask (``|w| <= threshold``, ``log alpha >= 3``, a gate that is exactly
zero, ...).  Without a target (``sparsity=None``) that rule alone decides, and the sparsity
reached is whatever the strength gave.  With a target ``sparsity=s``:

* *tuning* (methods marked ``tunable``): every ``tune_every`` steps the strength is
  multiplied by ``exp(clip(tune_gain * (goal - predicted), -0.5, 0.5))``, where
  ``predicted`` extrapolates the threshold rule's sparsity over the next three updates
  (its present value plus three times its last change: sparsity answers the strength
  late, and a rule on the present error alone overshoots) and ``goal`` is the cubic ramp
  of :func:`sparsity_lab.schedules.cubic` from 0 to ``s`` over the first ``tune_end`` of
  training, read three updates ahead;
* *projection* (always): at the end the mask keeps exactly ``1 - s`` of the weights (or
  groups): those the threshold rule keeps rank above those it prunes, and within each
  side the method's :meth:`~Regularizer.scores` decide (:meth:`~Regularizer.ranking`).
  ``budget`` spreads the zeros over layers: by default ``"learned"``, which scales every
  layer's density under the threshold rule by the same factor, so the layer budget the
  method learned keeps its shape (:meth:`~Regularizer.project_learned`); any registered
  budget (``"global"``, ``"uniform"``, ``"erk"``, ...) can be asked for instead.

Default strengths are set for the bundled models trained for a few epochs with Adam at
``lr=1e-3``; other optimizers and lengths need others (or a target, which tunes them).

Structured methods (``pattern="channel"``) zero whole output units; their masks feed
:func:`sparsity_lab.shrink.shrink`.  Their default targets leave out the last layer, whose
outputs are the classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import masks, patterns, registry, schedules
from ..methods.base import apportion
from ..patterns import Pattern, check_sparsity, count
from ..selection import select
from ..targets import default_targets, resolve
from ..train import Callback, Trainer, fit, make_optimizer

__all__ = [
    "Regularizer",
    "project",
    "reparametrize",
    "unparametrize",
    "OutputGate",
    "attach_gate",
    "detach_gate",
    "gate_of",
    "layer_of",
    "channel_view",
]


# --- the projection shared by every method ------------------------------------------------


def project(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    pattern: str | Pattern = "unstructured",
    budget: str = "global",
    reduction: str = "l1",
) -> dict[str, torch.Tensor]:
    """Bool keep-masks that keep the best ``1 - sparsity`` of the elements (or groups).

    The exact top-k of ``scores`` (higher = keep) under ``pattern``, with the zeros spread
    over tensors by ``budget`` exactly as :func:`sparsity_lab.prune` spreads them.  Ties
    go the way of :func:`sparsity_lab.patterns.prune_lowest` (lower index pruned first).
    This is also ADMM's Euclidean projection onto the sparse set when the scores are
    ``|w|``.
    """
    check_sparsity(sparsity)
    pat = patterns.get(pattern)
    for n, s in scores.items():
        pat.validate(tuple(s.shape), n)
    return select(scores, sparsity, pattern=pat, budget=budget, reduction=reduction)


# --- reparameterisation helpers -----------------------------------------------------------


def layer_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``"fc1.weight"`` -> (the ``fc1`` module, ``"weight"``)."""
    path, _, tensor_name = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError as err:
        raise KeyError(f"no module {path!r} in the model (from parameter name {name!r})") from err
    return module, tensor_name


def reparametrize(model: nn.Module, name: str, parametrization: nn.Module) -> nn.Module:
    """Register ``parametrization`` on parameter ``name``; returns the parametrization.

    The layer then computes with ``parametrization(original)``; ``original`` keeps the
    parameter's values and the parametrization's own parameters (gates, thresholds) become
    parameters of the model.
    """
    module, tensor_name = layer_of(model, name)
    parametrize.register_parametrization(module, tensor_name, parametrization, unsafe=True)
    return parametrization


def unparametrize(model: nn.Module, name: str, *, fold: bool = True) -> None:
    """Turn the parametrized ``name`` back into a plain parameter.

    ``fold=True`` keeps the parametrization's eval-mode value, which makes stochastic gates
    deterministic (their test-time value): the weight the trained model stands for.
    ``fold=False`` brings back the stored ``original`` (for methods whose final weight is
    the stored weight under a hard mask).
    """
    module, tensor_name = layer_of(model, name)
    if not parametrize.is_parametrized(module, tensor_name):
        return
    plist = module.parametrizations[tensor_name]
    modes = [(p, p.training) for p in plist]
    plist.eval()
    try:
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=fold)
    finally:
        for p, mode in modes:
            p.train(mode)


def channel_view(
    values: torch.Tensor, out: torch.Tensor, layer: nn.Module | None = None
) -> torch.Tensor:
    """``values`` of shape (C,) or (N, C) shaped to broadcast over ``layer``'s ``out``.

    A convolution's units are axis 1 of (N, C, ...); a Linear layer's are the last axis, so
    that a Linear applied to a sequence, (N, T, C) in a transformer, gates its units and
    not its positions.
    """
    n, channels = (values.shape[0], values.shape[1]) if values.dim() == 2 else (1, values.shape[0])
    if isinstance(layer, nn.Linear):
        return values.reshape(n, *([1] * (out.dim() - 2)), channels)
    return values.reshape(n, channels, *([1] * (out.dim() - 2)))


class OutputGate(nn.Module):
    """Per-output-unit state attached to a layer, applied to its output by a forward hook.

    Subclasses implement :meth:`gate` (the multiplier of each output unit, shape (C,) or,
    with per-example noise, (N, C)) and may override :meth:`transform` for more than a
    multiplication (noise that depends on the layer's input).  The gate lives as the
    layer's submodule ``sparsity_gate``, so its parameters are the model's parameters.
    """

    def gate(self, n: int) -> torch.Tensor:
        """Multiplier of each output unit for a batch of ``n`` examples."""
        raise NotImplementedError

    def perturb(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """What the gate does to the layer's output besides the multiplier (default
        nothing): noise that depends on the layer's input ``x``."""
        return out

    def transform(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The layer's new output from its input ``x`` and plain output ``out``."""
        out = self.perturb(layer, x, out)
        return out * channel_view(self.gate(out.shape[0]), out, layer)

    def fold(self) -> torch.Tensor:
        """The deterministic multiplier (C,) that :func:`detach_gate` folds into the layer."""
        with torch.no_grad():
            was = self.training
            self.eval()
            try:
                return self.gate(1).reshape(-1).detach()
            finally:
                self.train(was)


_GATE = "sparsity_gate"


def following_norm(model: nn.Module, layer_name: str) -> str | None:
    """Name of the BatchNorm right after layer ``layer_name`` in module order, or None.

    That is how the bundled models and an ``nn.Sequential`` place a layer's BatchNorm;
    the number of features must match the layer's outputs.
    """
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for i, (n, m) in enumerate(leaves[:-1]):
        if n == layer_name:
            nxt_name, nxt = leaves[i + 1]
            channels = getattr(m, "out_features", getattr(m, "out_channels", None))
            is_norm = isinstance(nxt, nn.modules.batchnorm._BatchNorm)
            if is_norm and nxt.num_features == channels and nxt.affine:
                return nxt_name
    return None


def _scale_norm_output(norm: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    # the gate is found through the norm (not a closure), so that a deepcopy of the model
    # gates with its own copy
    gate = norm.__dict__[_GATE]
    return out * channel_view(gate.gate(out.shape[0]), out, norm)


def attach_gate(layer: nn.Module, gate: OutputGate, norm: nn.Module | None = None) -> OutputGate:
    """Attach ``gate`` to ``layer``'s output (a submodule plus a forward hook).

    ``norm``, a BatchNorm right after the layer (:func:`following_norm`), takes the gate's
    multiplier on its own output instead: it would undo any scale of its input, so a scale
    before it changes nothing the loss sees and a prior on it shrinks it at no cost, even
    for the units the network uses.  :meth:`OutputGate.perturb` stays on the layer.
    """
    if hasattr(layer, _GATE):
        raise ValueError(f"{type(layer).__name__} already carries a {_GATE}; finalize it first")
    layer.add_module(_GATE, gate)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        own = getattr(module, _GATE)
        if own._norm is None:
            return own.transform(module, args[0], out)
        return own.perturb(module, args[0], out)

    # plain references: as attributes of a module, the norm would become the gate's
    # submodule, and its scale and shift the regularizer's parameters
    object.__setattr__(gate, "_norm", norm)
    gate._handles = [layer.register_forward_hook(hook)]
    if norm is not None:
        object.__setattr__(norm, _GATE, gate)
        gate._handles.append(norm.register_forward_hook(_scale_norm_output))
    return gate


def gate_of(layer: nn.Module) -> OutputGate | None:
    """The gate attached to ``layer``, or None."""
    return getattr(layer, _GATE, None)


def detach_gate(layer: nn.Module, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Fold the gate's deterministic multiplier into ``layer``'s weight rows and bias (or,
    for a gate on a BatchNorm's output, into the norm's scale and shift), remove the gate,
    and return the multiplier that was folded.

    ``keep`` (bool per unit) zeroes the multiplier of the units being pruned, so that their
    bias goes too and they output exactly zero, as they did behind a closed gate.
    """
    gate = gate_of(layer)
    if gate is None:
        raise KeyError(f"{type(layer).__name__} has no {_GATE}")
    scale = gate.fold()
    if keep is not None:
        scale = scale * keep.to(scale.dtype)
    host = layer if gate._norm is None else gate._norm
    with torch.no_grad():
        w = masks.dense_weight(host, "weight")
        w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))))
        if getattr(host, "bias", None) is not None:
            host.bias.mul_(scale)
    for handle in gate._handles:
        handle.remove()
    if gate._norm is not None:
        del gate._norm.__dict__[_GATE]
    delattr(layer, _GATE)
    return scale


# --- the base class -----------------------------------------------------------------------


class Regularizer(Callback):
    """Base class of the registered regularizers (see the module docstring for the stages).

    Common options: ``strength`` (the penalty's coefficient; ``None``: the method's
    default), ``sparsity`` (target fraction of zeros; ``None``: the threshold rule decides),
    ``pattern`` (one of :attr:`supported_patterns`), ``budget`` (how a target is spread
    over layers at the projection: ``"learned"`` or a registered budget), ``targets``
    (parameter names; default every Linear/Conv weight, without the last layer for
    structured methods), ``exclude``, ``gate_lr`` (learning rate of the parameters the
    method adds, as a multiple of the weights' rate, used by :meth:`fit`), ``tune`` (steer
    the strength toward the target; default: on when a target is given and the method is
    :attr:`tunable`), ``tune_every``, ``tune_gain``, ``tune_end``, ``tune_range`` (the
    tuner keeps the strength within this factor of its start, either way) and ``seed`` (recorded;
    sampled gates and noise use torch's generator, which ``fit(seed=...)`` seeds).
    """

    name: ClassVar[str] = "regularizer"
    #: Patterns the method supports; the first one is the default.
    supported_patterns: ClassVar[tuple[str, ...]] = ("unstructured",)
    #: Strength used when none is given.
    default_strength: ClassVar[float] = 1e-4
    #: Whether the strength controls sparsity, so that a target can tune it.
    tunable: ClassVar[bool] = True
    #: How :meth:`scores` combine into a group score (``"sum"`` keeps single-weight
    #: scores as they are, signs included).
    reduction: ClassVar[str] = "sum"
    #: How a target is spread over layers at the projection, unless ``budget`` is given.
    default_budget: ClassVar[str] = "learned"

    def __init__(
        self,
        strength: float | None = None,
        *,
        sparsity: float | None = None,
        pattern: str | Pattern | None = None,
        budget: str | None = None,
        targets: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        gate_lr: float = 10.0,
        tune: bool | None = None,
        tune_every: int = 10,
        tune_gain: float = 3.0,
        tune_end: float = 0.75,
        tune_range: float = 1e4,
        seed: int = 0,
    ) -> None:
        strength = self.default_strength if strength is None else strength
        if not isinstance(strength, (int, float)) or strength < 0 or math.isnan(strength):
            raise ValueError(
                f"{self.name}: strength must be a number >= 0, got {strength!r}; it multiplies "
                f"the penalty (0 trains without it)"
            )
        self.strength = float(strength)
        self.initial_strength = self.strength
        if sparsity is not None:
            check_sparsity(sparsity)
            sparsity = float(sparsity)
        self.sparsity = sparsity
        self.pattern = patterns.get(pattern or self.supported_patterns[0])
        if self.pattern.name not in self.supported_patterns:
            raise ValueError(
                f"{self.name} supports the patterns {', '.join(self.supported_patterns)}, "
                f"got {self.pattern!r}; pick one of those"
            )
        self.budget = budget or self.default_budget
        if self.budget != "learned":
            registry.get(self.budget, "budget")  # a misspelt budget fails now, with suggestions
        if not gate_lr > 0:
            raise ValueError(
                f"gate_lr must be a positive factor of the learning rate, got {gate_lr}"
            )
        self.gate_lr = float(gate_lr)
        self.targets = None if targets is None else list(targets)
        self.exclude = list(exclude)
        if tune and not self.tunable:
            raise ValueError(f"{self.name} has no strength that sets the sparsity; pass tune=False")
        if tune and sparsity is None:
            raise ValueError("tune=True needs a target: pass sparsity=...")
        self.tune = bool(self.tunable and sparsity is not None if tune is None else tune)
        if tune_every < 1:
            raise ValueError(f"tune_every must be a positive number of steps, got {tune_every}")
        if not 0 < tune_end <= 1:
            raise ValueError(f"tune_end must be a fraction of training in (0, 1], got {tune_end}")
        self.tune_every, self.tune_gain, self.tune_end = int(tune_every), tune_gain, tune_end
        if not tune_range >= 1:
            raise ValueError(
                f"tune_range must be a factor >= 1 (how far the tuner may move the strength "
                f"from its start, either way), got {tune_range}"
            )
        self.tune_range = float(tune_range)
        self.seed = seed
        self.model: nn.Module | None = None
        self.names_: list[str] = []
        self.reached: float | None = None
        self.layer_sparsity: dict[str, float] = {}
        self.n_train: int | None = None
        self.log: list[dict[str, Any]] = []
        self._end_step = 1

    # --- what is regularised ---------------------------------------------------------------

    @property
    def structured(self) -> bool:
        """Whether whole output units are zeroed (masks of the ``channel`` pattern)."""
        return self.pattern.name == "channel"

    def names(self, model: nn.Module) -> list[str]:
        """The regularised tensors: targets minus exclusions (:func:`~sparsity_lab.targets.
        resolve`); by default, with whole units, every layer but the last, whose outputs are
        the classes."""
        targets = self.targets
        if targets is None and self.structured:
            found = default_targets(model)
            targets = found[:-1] if len(found) > 1 else found
        return resolve(model, targets, self.exclude)

    def weight(self, name: str) -> torch.Tensor:
        """The stored weight of ``name`` (the parametrization's ``original`` if any)."""
        module, tensor_name = layer_of(self.model, name)
        if parametrize.is_parametrized(module, tensor_name):
            return module.parametrizations[tensor_name].original
        return getattr(module, tensor_name)

    # --- stage 1: prepare ------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        """Make ``model`` ready for training with this method (idempotent); returns it.

        Call it before the optimizer is built when the regularizer is used as a plain
        callback: it may add parameters (gates, thresholds, noise scales) to the model.
        """
        if self.model is model:
            return model
        if self.model is not None:
            raise RuntimeError(f"this {self.name} regularizer is bound to another model")
        names = self.names(model)
        for n in names:
            module, tensor_name = layer_of(model, n)
            if parametrize.is_parametrized(module, tensor_name):
                raise ValueError(
                    f"{n} already carries a mask or parametrization; regularizers start from "
                    f"plain weights: call sparsity_lab.masks.squash(model) first"
                )
            if not isinstance(getattr(module, tensor_name, None), nn.Parameter):
                raise KeyError(f"{n!r} is not a parameter of the model")
            if self.pattern.name != "unstructured":
                self.pattern.validate(tuple(getattr(module, tensor_name).shape), n)
        self.model, self.names_ = model, names
        self.setup(model)
        return model

    def setup(self, model: nn.Module) -> None:
        """Add the method's gates or parameters to ``model`` (default: nothing)."""

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the method added to the model (they must be in the optimizer)."""
        return []

    # --- stage 2: training -----------------------------------------------------------------

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """The differentiable penalty, without the strength (None: the method has none)."""
        return None

    def after_step(self, trainer: Trainer) -> None:
        """Act on the weights after each optimizer step (default: nothing)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.model is not trainer.model:
            self.prepare(trainer.model)
        held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        if any(id(p) not in held for p in self.parameters()):
            raise RuntimeError(
                f"the optimizer does not hold the parameters {self.name} adds to the model; "
                f"call reg.prepare(model) before building the optimizer, or use reg.fit(...)"
            )
        dataset = getattr(trainer.train_loader, "dataset", None)
        self.n_train = len(dataset) if dataset is not None else None
        self._end_step = max(1, round(self.tune_end * trainer.total_steps))
        self.log: list[dict[str, Any]] = []

    def on_after_backward(self, trainer: Trainer) -> None:
        if self.strength == 0:
            return
        value = self.penalty(trainer.model)
        if value is not None and value.requires_grad:
            # adds d(strength * penalty)/d(param) to the gradients of the batch loss
            (self.strength * value).backward()

    def on_step_end(self, trainer: Trainer) -> None:
        self.after_step(trainer)
        if self.tune and trainer.step % self.tune_every == 0:
            self._tune(trainer.step)

    def goal(self, step: int) -> float:
        """The sparsity the tuner aims at after ``step`` steps: a cubic ramp to the target."""
        return schedules.cubic(min(step, self._end_step), self.sparsity, 0, self._end_step)

    def tune_signal(self) -> float:
        """The sparsity the tuner steers (default: the threshold rule's, now)."""
        return self.current_sparsity()

    def _tune(self, step: int) -> None:
        now = self.tune_signal()
        previous = self.log[-1]["sparsity"] if self.log else now
        # Sparsity answers a change of strength late (weights take many steps to reach the
        # threshold), so a rule on the present error alone overshoots.  Extrapolate the
        # present trend over a horizon of a few updates and compare with the goal there:
        # a proportional-derivative rule on log(strength).
        horizon = 3
        predicted = now + horizon * (now - previous)
        error = self.goal(step + horizon * self.tune_every) - predicted
        # multiplicative, so the strength stays positive and moves on a log scale; clipped
        # so that one reading changes it by at most a factor e^0.5
        self.strength *= math.exp(max(-0.5, min(0.5, self.tune_gain * error)))
        # Bounded: while the sparsity cannot follow (weights stuck below the threshold
        # whatever the strength, or a target the method cannot reach), the error never
        # closes and an unbounded strength winds up by many orders of magnitude; coming
        # back then overshoots until the penalty's gradients overflow and training diverges.
        low, high = self.initial_strength / self.tune_range, self.initial_strength * self.tune_range
        self.strength = min(max(self.strength, low), high)
        self.log.append(
            {"step": step, "goal": self.goal(step), "sparsity": now, "strength": self.strength}
        )

    def on_epoch_end(self, trainer: Trainer) -> None:
        row = trainer.history[-1]
        row["reg_sparsity"] = self.current_sparsity()
        row["strength"] = self.strength

    def on_train_end(self, trainer: Trainer) -> None:
        self.finalize(trainer.model)

    # --- stage 3: masks --------------------------------------------------------------------

    def keep(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The threshold rule: a bool keep-mask per regularised tensor."""
        raise NotImplementedError

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The method's own importance per element (higher = keep), reduced per group with
        :attr:`reduction`; a target's projection ranks by it (see :meth:`ranking`)."""
        raise NotImplementedError

    @torch.no_grad()
    def ranking(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Element scores for a target's projection, constant over each group.

        Groups the threshold rule keeps rank above all the groups it prunes; within each
        side the method's :meth:`scores` decide.  So a projection to more sparsity than
        the rule reached removes the kept groups the method values least, and one to less
        sparsity brings back the pruned groups it was least sure about.  Scores become
        global ranks (a monotone map, so one order covers every layer): ``rank / n`` in
        [0, 1) for pruned groups, ``2 + rank / n`` for kept ones.
        """
        rule, own, pat = self.keep(model), self.scores(model), self.pattern
        alive = [pat._grouped(rule[n]).any(dim=1) for n in self.names_]
        group = [
            patterns.reduce_groups(pat._grouped(own[n].double()), self.reduction)
            for n in self.names_
        ]
        flat = torch.cat(group)
        rank = torch.empty_like(flat)
        rank[torch.argsort(flat, stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype)
        rank = rank / flat.numel() + 2 * torch.cat(alive).to(flat.dtype)
        out = {}
        for n, part in zip(self.names_, rank.split([g.numel() for g in group]), strict=True):
            out[n] = pat.expand(part, tuple(rule[n].shape))
        return out

    @torch.no_grad()
    def project_learned(
        self, model: nn.Module, rule: dict[str, torch.Tensor], sparsity: float
    ) -> dict[str, torch.Tensor]:
        """Keep-masks at ``sparsity`` that scale every layer's learned density alike.

        The ``"learned"`` budget: the weights kept in each layer are proportional to what
        the threshold rule kept there (largest-remainder rounding; a full layer passes its
        share on), so the per-layer budget the method learned keeps its shape, and no
        layer is emptied by ranking raw scores of different scales across layers, which a
        global order does to a barely trained network.  Inside a layer the groups go by
        :meth:`ranking`.  If the rule kept nothing at all, the density is uniform.
        """
        pat = self.pattern
        shapes = {n: tuple(rule[n].shape) for n in self.names_}
        size = {n: math.prod(shapes[n]) for n in self.names_}
        total = sum(size.values())
        kept = {n: int(rule[n].sum()) for n in self.names_}
        weights = kept if sum(kept.values()) > 0 else size
        share = apportion(total - count(sparsity, total), weights, size)
        rank = self.ranking(model)
        out, emptied = {}, []
        for n in self.names_:
            per_group = pat.group_size(shapes[n])
            n_groups = pat.n_groups(shapes[n])
            keep_groups = min(n_groups, int(math.floor(share[n] / per_group + 0.5)))
            out[n] = pat.prune_groups(rank[n], n_groups - keep_groups, "max")
            if keep_groups == 0 and sparsity < 1:
                emptied.append(f"{n} (the rule kept {kept[n]} of {size[n]} weights there)")
        if emptied:
            # a layer with no weights left cuts every path through it
            warnings.warn(
                f"{self.name}: the learned budget leaves no weight in {'; '.join(emptied)} at "
                f"{sparsity:.0%} sparsity: it scales each layer's density under the threshold "
                "rule by one factor, and these layers' shares rounded to nothing.  Pass "
                "budget='uniform' (or 'erk') to spread the target over the layers, or a "
                "weaker strength",
                stacklevel=2,
            )
        return out

    def release(self, model: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fold gates and parametrizations into plain weights; return extra masks to attach
        (e.g. a BatchNorm's scale), default none."""
        return {}

    @torch.no_grad()
    def current_sparsity(self) -> float:
        """Sparsity the threshold rule would give now, over the regularised tensors."""
        keep = self.keep(self.model)
        total = sum(k.numel() for k in keep.values())
        return 1 - sum(int(k.sum()) for k in keep.values()) / max(1, total)

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Choose the masks, fold the method's state into plain weights, attach the masks.

        Returns ``{name: keep_mask}``.  Sets ``reached`` (the threshold rule's sparsity)
        and ``layer_sparsity`` (per tensor, the budget the method learned).
        """
        if self.model is not model:
            raise RuntimeError(f"{self.name} was prepared for another model")
        rule = self.keep(model)
        self.layer_sparsity = {n: 1 - float(k.float().mean()) for n, k in rule.items()}
        total = sum(k.numel() for k in rule.values())
        self.reached = 1 - sum(int(k.sum()) for k in rule.values()) / total
        if self.sparsity is None:
            keep = rule
        elif self.budget == "learned":
            keep = self.project_learned(model, rule, self.sparsity)
        else:
            keep = project(
                self.ranking(model),
                self.sparsity,
                pattern=self.pattern,
                budget=self.budget,
                reduction="max",
            )
        extra = self.release(model, keep)
        for n, k in {**keep, **extra}.items():
            masks.attach(model, n, k)
        self.model = None  # the model is an ordinary masked model from now on
        return keep

    # --- running ---------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        train_loader: Any,
        val_loader: Any = None,
        *,
        epochs: int = 10,
        callbacks: Iterable[Callback] = (),
        **fit_options: Any,
    ) -> pd.DataFrame:
        """Prepare ``model``, train it with this regularizer and attach the final masks.

        ``fit_options`` go to :func:`sparsity_lab.train.fit` (optimizer, lr, momentum,
        weight_decay, lr_schedule, seed, ...).  The parameters the method adds (gates,
        thresholds, noise scales) form their own parameter group, with ``gate_lr`` times
        the learning rate and no weight decay: a decay would pull them toward values that
        mean something (log sigma^2 = 0 is large noise), and the few hundred steps of a
        small run only move them far enough at a higher rate.  The history gains the
        columns ``reg_sparsity`` (the threshold rule's sparsity at each epoch end) and
        ``strength``.
        """
        self.prepare(model)
        own = self.parameters()
        name = fit_options.get("optimizer", "sgd")
        if own and isinstance(name, str):
            lr = fit_options.get("lr", 0.1)
            momentum = fit_options.get("momentum", 0.9)
            weight_decay = fit_options.get("weight_decay", 0.0)
            ids = {id(p) for p in own}

            def optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
                groups = [
                    {"params": [p for p in params if id(p) not in ids]},
                    {"params": own, "lr": lr * self.gate_lr, "weight_decay": 0.0},
                ]
                return make_optimizer(
                    name, groups, lr=lr, momentum=momentum, weight_decay=weight_decay
                )

            fit_options["optimizer"] = optimizer
        return fit(
            model,
            train_loader,
            val_loader,
            epochs=epochs,
            callbacks=[self, *callbacks],
            **fit_options,
        )

    def __repr__(self) -> str:
        target = "" if self.sparsity is None else f", sparsity={self.sparsity}"
        return f"{type(self).__name__}(strength={self.strength:g}{target})"
