"""Dynamic sparse training: a sparse network that prunes and regrows while it trains.

Survey section 4.  The network starts sparse (a random mask whose layer densities come
from a budget, ERK by default) and keeps the number of weights fixed; every few steps
some weights are dropped and as many are grown.  The methods differ in what they drop
and grow:

========  ==========================  ===============================================
name      drop                        grow
========  ==========================  ===============================================
set       smallest ``|w|``            uniformly at random
deepr     weights whose sign flips    uniformly at random (with a random sign)
dsr       ``|w|`` below an adaptive   at random, layers in proportion to their
          global threshold            surviving weights
snfs      smallest ``|w|``            largest ``|momentum|``; layers in proportion to
                                      their mean momentum
rigl      smallest ``|w|``            largest ``|dense gradient|``
topkast   (re-selects top-k |w| of the dense weights; gradients reach a larger set)
dpf       (re-selects top-k |w| of the dense weights; dense weights get the
          gradient of the sparse model)
========  ==========================  ===============================================

The kept weights start rescaled to each unit's kept fan-in
(:func:`~sparsity_lab.criteria.at_init.rescale_fan_in`): with the dense initialisation a
very sparse deep net starts with almost no signal.

Optimizer state follows the masks (see :func:`sparsity_lab.scheduled.change_masks`): a
dropped weight is zeroed and loses its momentum or Adam moments, a grown weight starts at
zero (or at ``grow_init``'s draw) with none, and the number of weights kept is exact after
every update.  Updates run from ``begin`` to ``end`` (fractions of training); the step
numbers are ``begin_step`` and ``end_step`` once training starts, and ``last_scores`` holds
the drop and grow scores of the latest update for inspection.  Top-KAST and
DPF are different by design: they keep dense weights and let masked ones come back with
their values.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from .. import masks
from ..criteria.at_init import rescale_fan_in
from ..patterns import prune_lowest
from ..pruning import prune
from ..registry import register
from ..scheduled import change_masks, reset_state
from ..schedules import cubic
from ..train import Trainer
from .base import TrainingMethod, apportion, check_fraction, n_active

DECAYS = ("cosine", "linear", "constant")
#: How a newly grown weight starts: at zero (every method's paper), or drawn like
#: google-research/rigl's ``random_normal`` (std of the layer's surviving weights) and
#: ``random_uniform`` (within +-their mean ``|w|``).
GROW_INITS = ("zeros", "random_normal", "random_uniform")


def decayed_fraction(step: int, initial: float, end_step: int, decay: str = "cosine") -> float:
    """The drop fraction at ``step``: ``initial`` decayed to 0 at ``end_step``.

    ``cosine`` is RigL's ``f(t) = initial / 2 * (1 + cos(pi * t / end_step))``; ``linear``
    falls in a straight line; ``constant`` stays at ``initial`` (SET).  0 from
    ``end_step`` on, when the mask is frozen.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    if step >= end_step:
        return 0.0
    t = step / end_step
    if decay == "cosine":
        return initial / 2 * (1 + math.cos(math.pi * t))
    if decay == "linear":
        return initial * (1 - t)
    return initial


def prune_and_grow(
    mask: torch.Tensor,
    drop_scores: torch.Tensor,
    grow_scores: torch.Tensor,
    n_drop: int,
    n_grow: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prune-and-grow step on one tensor; returns (mask after the drop, final mask).

    Drops the ``n_drop`` kept entries with the lowest ``drop_scores``, then grows the
    ``n_grow`` (default ``n_drop``) entries with the highest ``grow_scores`` among those
    not kept after the drop, so a just-dropped entry may come straight back (as in RigL's
    algorithm; whether it keeps its value is the method's choice, see
    :attr:`DynamicSparse.regrown_restart`).  Ties go to the lower index, as in a stable
    sort of the scores; each side is one partial selection
    (:func:`~sparsity_lab.patterns.prune_lowest`), not a sort: a method may call this at
    every step, on every layer.
    """
    n_grow = n_drop if n_grow is None else n_grow
    keep = mask.detach().bool().flatten()
    if n_drop > int(keep.sum()):
        raise ValueError(f"cannot drop {n_drop} of {int(keep.sum())} kept entries")
    inf = torch.tensor(math.inf, dtype=torch.float64, device=keep.device)
    # NaN (a diverged run, flagged later) ranks above every score, as in torch's sort
    drop = torch.where(keep, _nan_as(drop_scores, math.inf), inf)
    after = keep & prune_lowest(drop, n_drop)
    return after.reshape(mask.shape), grow_into(after.reshape(mask.shape), grow_scores, n_grow)


def grow_into(kept: torch.Tensor, grow_scores: torch.Tensor, n_grow: int) -> torch.Tensor:
    """The bool mask ``kept`` plus the ``n_grow`` entries it does not keep with the highest
    ``grow_scores`` (ties to the lower index): the grow half of :func:`prune_and_grow`, for
    a method that knows which entries it drops without ranking them."""
    after = kept.flatten()
    if n_grow > int((~after).sum()):
        raise ValueError(f"cannot grow {n_grow} entries: only {int((~after).sum())} are free")
    inf = torch.tensor(math.inf, dtype=torch.float64, device=after.device)
    # the highest grow scores, lower index first, are the lowest of their negation
    grow = torch.where(after, inf, -_nan_as(grow_scores, math.inf))
    return (after | ~prune_lowest(grow, n_grow)).reshape(kept.shape)


def _nan_as(scores: torch.Tensor, value: float) -> torch.Tensor:
    """``scores`` flat, in float64, with NaN replaced by ``value`` (infinities kept)."""
    flat = scores.detach().flatten().double()
    return flat.nan_to_num(value, posinf=math.inf, neginf=-math.inf)


def sample_without_replacement(population: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct integers of ``range(population)`` (int64), every k-subset equally likely.

    Draws about ``k`` numbers, not one per member (as a random score for each would): a
    repeated draw is discarded and drawn again, which keeps each accepted number uniform
    over those not yet chosen.  Where ``k`` is over half the population, a permutation of
    it is cheaper.
    """
    if not 0 <= k <= population:
        raise ValueError(f"cannot draw {k} distinct numbers of {population}")
    if 2 * k > population:
        return torch.randperm(population, generator=generator)[:k]
    chosen: dict[int, None] = {}  # insertion-ordered: the order of the draws
    while len(chosen) < k:
        for number in torch.randint(
            0, population, (k - len(chosen),), generator=generator
        ).tolist():
            chosen.setdefault(number)
    return torch.tensor(list(chosen), dtype=torch.int64)


# --- the sparse-from-scratch baseline ------------------------------------------------------


class StaticSparse(TrainingMethod):
    """Static sparse training: a random mask, its layer densities set by the budget, kept
    fixed for the whole run.  The baseline every dynamic method must beat (not registered).

    The kept weights of each unit are rescaled to its sparse fan-in at the start
    (:func:`~sparsity_lab.criteria.at_init.rescale_fan_in`); set ``rescale_init = False``
    on the method (or pass ``rescale_init=False``) to start from the plain dense
    initialisation restricted to the mask.
    """

    name = "static"
    default_budget = "erk"
    #: Whether the masks pass dense gradients (``masks.attach(..., dense_grad=True)``).
    mask_dense_grad = False
    #: Whether the initial weights are rescaled to each unit's kept fan-in.
    rescale_init = True

    def __init__(self, sparsity: float, *, rescale_init: bool = True, **options) -> None:
        super().__init__(sparsity, **options)
        self.rescale_init = rescale_init

    def on_train_begin(self, trainer: Trainer) -> None:
        self.log = []
        self._generator = torch.Generator().manual_seed(self.seed)
        self.init_masks(trainer)

    def init_masks(self, trainer: Trainer) -> None:
        """Attach the initial masks: uniformly random within each layer's budget."""
        prune(
            trainer.model,
            "random",
            self.sparsity,
            dense_grad=self.mask_dense_grad,
            **self.prune_options(),
        )
        if self.rescale_init:
            self.init_scale = rescale_fan_in(trainer.model, self.masked_names(trainer.model))

    def on_epoch_end(self, trainer: Trainer) -> None:
        names = self.masked_names(trainer.model)
        total = sum(masks.get_mask(trainer.model, n).numel() for n in names)
        trainer.history[-1]["sparsity"] = 1 - n_active(trainer.model, names) / total


class DynamicSparse(StaticSparse):
    """Prune and grow every ``update_frequency`` steps until ``end`` (a fraction of training).

    ``drop_fraction`` of each layer's kept weights are dropped and as many grown; the
    fraction decays with ``decay`` (``cosine``, ``linear`` or ``constant``) to 0 at ``end``.
    ``update_frequency="epoch"`` updates once per epoch; ``None`` takes the method's
    default.  ``begin`` (a fraction of training, 0 by default) delays the first update to
    step ``begin_step``; the fraction then decays over ``begin_step .. end_step``.
    ``grow_init`` says how grown weights start (:data:`GROW_INITS`).  Subclasses say what to
    drop and grow (:meth:`drop_scores`, :meth:`grow_scores`, higher = keep / grow first);
    after each update ``last_scores`` holds ``{"step", "drop", "grow"}``, the scores of
    every layer, for inspection.
    """

    supported_patterns = ("unstructured",)
    default_drop_fraction = 0.3
    default_decay = "cosine"
    default_frequency: int | str = 100
    #: Whether an entry dropped and grown back in the same update restarts from zero with
    #: no optimizer state (True), or keeps its value and state, as google-research/rigl
    #: does for RigL and SET, where only positions outside the old mask are new (False).
    regrown_restart: ClassVar[bool] = True

    def __init__(
        self,
        sparsity: float,
        *,
        drop_fraction: float | None = None,
        decay: str | None = None,
        update_frequency: int | str | None = None,
        end: float = 0.75,
        begin: float = 0.0,
        grow_init: str = "zeros",
        rescale_init: bool = True,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        self.rescale_init = rescale_init
        fraction = self.default_drop_fraction if drop_fraction is None else drop_fraction
        self.drop_fraction = check_fraction("drop_fraction", fraction)
        self.decay = decay or self.default_decay
        decayed_fraction(0, 0.0, 1, self.decay)  # validates the name
        if update_frequency is None:
            update_frequency = self.default_frequency
        if update_frequency != "epoch" and (
            isinstance(update_frequency, bool)
            or not isinstance(update_frequency, int)
            or update_frequency < 1
        ):
            raise ValueError(
                f"update_frequency must be a positive number of steps or 'epoch', got "
                f"{update_frequency!r}"
            )
        self.update_frequency = update_frequency
        self.end = check_fraction("end", end)
        self.begin = check_fraction("begin", begin)
        if self.begin > self.end:
            raise ValueError(f"begin ({begin}) must not come after end ({end})")
        if grow_init not in GROW_INITS:
            raise ValueError(f"grow_init must be one of {', '.join(GROW_INITS)}, got {grow_init!r}")
        self.grow_init = grow_init

    def on_train_begin(self, trainer: Trainer) -> None:
        per_epoch = max(1, trainer.total_steps // trainer.epochs)
        self.frequency = per_epoch if self.update_frequency == "epoch" else self.update_frequency
        self.begin_step = round(self.begin * trainer.total_steps)
        self.end_step = round(self.end * trainer.total_steps)
        self.last_scores: dict[str, Any] = {}
        super().on_train_begin(trainer)

    def is_update_step(self, step: int) -> bool:
        """Whether the masks change after optimizer step number ``step``."""
        since = step - self.begin_step
        return since > 0 and since % self.frequency == 0 and step < self.end_step

    def fraction_at(self, step: int) -> float:
        """The drop fraction after step ``step`` (see :func:`decayed_fraction`), decayed
        over the steps from ``begin_step`` to ``end_step``."""
        span = self.end_step - self.begin_step
        return decayed_fraction(step - self.begin_step, self.drop_fraction, span, self.decay)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.is_update_step(trainer.step):
            self.update(trainer)

    # what to drop and what to grow -------------------------------------------------------

    def drop_scores(self, trainer: Trainer, name: str) -> torch.Tensor:
        """Scores of the kept weights; the lowest are dropped.  Default: ``|w|``."""
        return masks.weight(trainer.model, name).detach().abs()

    def grow_scores(self, trainer: Trainer, name: str) -> torch.Tensor:
        """Scores of the free positions; the highest are grown."""
        raise NotImplementedError

    def grown_values(
        self, trainer: Trainer, name: str, surviving: torch.Tensor
    ) -> torch.Tensor | None:
        """Start values for the weights grown in ``name`` (``None``: zeros), drawn from the
        statistics of its ``surviving`` weights as ``grow_init`` says."""
        if self.grow_init == "zeros":
            return None
        weight = masks.dense_weight(trainer.model, name).detach()
        kept = weight[surviving.bool()].double()
        if self.grow_init == "random_normal":
            std = float(kept.std()) if kept.numel() > 1 else 0.0
            draw = torch.randn(weight.shape, generator=self._generator, dtype=torch.float64) * std
        else:
            bound = float(kept.abs().mean()) if kept.numel() else 0.0
            unit = torch.rand(weight.shape, generator=self._generator, dtype=torch.float64)
            draw = (2 * unit - 1) * bound
        return draw.to(device=weight.device, dtype=weight.dtype)

    def plan(self, trainer: Trainer, names: list[str], fraction: float) -> dict[str, tuple]:
        """``{name: (n_drop, n_grow)}``; by default each layer regrows what it dropped."""
        plan = {}
        for n in names:
            # floored, as the reference implementations truncate the count
            k = math.floor(fraction * int(masks.get_mask(trainer.model, n).count_nonzero()))
            plan[n] = (k, k)
        return plan

    def update(self, trainer: Trainer) -> None:
        """One prune-and-grow step over every masked layer."""
        model, names = trainer.model, self.masked_names(trainer.model)
        fraction = self.fraction_at(trainer.step)
        plan = self.plan(trainer, names, fraction)
        old, dropped, final = {}, {}, {}
        drop_scores, grow_scores = {}, {}
        for n in names:
            n_drop, n_grow = plan[n]
            old[n] = masks.get_mask(model, n).bool().clone()
            drop_scores[n] = self.drop_scores(trainer, n).detach().clone()
            grow_scores[n] = self.grow_scores(trainer, n).detach().clone()
            dropped[n], final[n] = prune_and_grow(
                old[n], drop_scores[n], grow_scores[n], n_drop, n_grow
            )
        self.last_scores = {"step": trainer.step, "drop": drop_scores, "grow": grow_scores}
        if self.regrown_restart:  # two steps: an entry dropped and grown again restarts
            change_masks(model, dropped, trainer.optimizer)
            old = dropped
        starts = {n: self.grown_values(trainer, n, dropped[n]) for n in names}
        change_masks(model, final, trainer.optimizer)
        with torch.no_grad():
            for n in names:
                fresh = final[n] & ~old[n]  # a position new to the mask, restarted
                if starts[n] is not None:
                    masks.dense_weight(model, n)[fresh] = starts[n][fresh]
        self.log.append(
            {
                "step": trainer.step,
                "drop_fraction": fraction,
                "dropped": sum(plan[n][0] for n in names),
                "grown": sum(plan[n][1] for n in names),
                "active": n_active(model, names),
            }
        )


# --- the registered methods ---------------------------------------------------------------


@register("training", "set", section="4")
class SET(DynamicSparse):
    """Sparse evolutionary training (Mocanu et al. 2018).

    Rule: every update (once per epoch by default), in each layer drop the fraction
    ``zeta`` (``drop_fraction=0.3``, constant) of kept weights with the smallest ``|w|`` and
    grow as many connections chosen uniformly at random among the free ones, starting at
    zero.  Unstructured; budget ``er`` by default (the paper's Erdos-Renyi layers).
    """

    name = "set"
    default_budget = "er"
    default_decay = "constant"
    default_frequency = "epoch"

    def grow_scores(self, trainer: Trainer, name: str) -> torch.Tensor:
        shape = masks.get_mask(trainer.model, name).shape
        return torch.rand(shape, generator=self._generator, dtype=torch.float64)


@register("training", "rigl", section="4")
class RigL(DynamicSparse):
    """Rigging the lottery (Evci et al. 2020).

    Rule: every ``update_frequency`` (100) steps until 75% of training, in each layer drop
    ``k = floor(f(t) * n_kept)`` weights with the smallest ``|w|`` and grow the ``k`` free
    ones with the largest dense gradient ``|dL/dw|`` on the current batch;
    ``f(t) = alpha/2 (1 + cos(pi t / T_end))`` with ``alpha = 0.3``.  As in
    google-research/rigl, grown positions outside the old mask start at zero with no
    optimizer state, while a weight dropped and grown back in the same update keeps its value
    and momentum.  Between updates the gradient is sparse; only update steps compute the
    dense one.  Unstructured; ERK budget.

    ``timing`` says when the masks change.  ``"after_step"`` (the default): after optimizer
    steps ``begin_step + f, + 2f, ...`` below ``end_step``, on the dense gradient of the batch
    just stepped on.  ``"reference"`` does as google-research/rigl's ``SparseRigLOptimizer``:
    an update iteration is one whose optimizer-step count ``t`` satisfies
    ``begin_step <= t <= end_step`` and ``t >= last update + f`` (so the first is at
    ``begin_step``, step 0 by default), and on it the mask update *replaces* the optimizer
    step (``trainer.skip_step``): the batch's dense gradient only chooses what grows, and
    the step count does not advance, as the reference's global step does not.  Differences
    that remain in both timings: the reference adds ``N(0, 1e-5)`` noise to the drop scores
    where ties here go to the lower index, and its cosine decay runs on the global step over
    ``end_step - begin_step`` steps, where here it runs from ``begin_step`` (the same when
    ``begin_step`` is 0).
    """

    name = "rigl"
    regrown_restart = False
    TIMINGS = ("after_step", "reference")

    def __init__(self, sparsity: float, *, timing: str = "after_step", **options: Any) -> None:
        super().__init__(sparsity, **options)
        if timing not in self.TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(self.TIMINGS)}, got {timing!r}")
        self.timing = timing

    @property
    def skips_optimizer_steps(self) -> bool:
        """Whether some batches update the masks instead of stepping (reference timing)."""
        return self.timing == "reference"

    def on_train_begin(self, trainer: Trainer) -> None:
        super().on_train_begin(trainer)
        self._grads: dict[str, torch.Tensor] = {}
        self._dense_step = False
        self._last_update: int | None = None

    def is_update_iteration(self, step: int) -> bool:
        """Reference timing: whether the batch at optimizer-step count ``step`` updates the
        masks instead of stepping."""
        due = self._last_update is None or step >= self._last_update + self.frequency
        return self.begin_step <= step <= self.end_step and due

    def on_step_end(self, trainer: Trainer) -> None:
        if self.timing == "after_step":
            super().on_step_end(trainer)

    def _set_dense_grad(self, model, flag: bool) -> None:
        for n in self.masked_names(model):
            masks.attach(model, n, masks.get_mask(model, n), dense_grad=flag)

    def on_step_begin(self, trainer: Trainer) -> None:
        # Only the steps that end in an update pay for the dense gradient.
        if self.timing == "reference":
            self._dense_step = self.is_update_iteration(trainer.step)
        else:
            self._dense_step = self.is_update_step(trainer.step + 1)
        if self._dense_step:
            self._set_dense_grad(trainer.model, True)

    def on_after_backward(self, trainer: Trainer) -> None:
        if not self._dense_step:
            return
        model = trainer.model
        for n in self.masked_names(model):
            param = masks.dense_weight(model, n)
            self._grads[n] = param.grad.detach().abs().clone()
            param.grad.mul_(masks.get_mask(model, n))  # the update itself stays sparse
        self._set_dense_grad(model, False)
        if self.timing == "reference":
            self.update(trainer)
            self._last_update = trainer.step
            trainer.skip_step = True

    def grow_scores(self, trainer: Trainer, name: str) -> torch.Tensor:
        return self._grads[name]

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """A dense weight gradient on update steps: ``2 * sparse + dense``, else ``3 * sparse``."""
        return 2 * sparse + dense if self._dense_step else 3 * sparse


def momentum_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The optimizer's momentum of ``param``: SGD's ``momentum_buffer`` or Adam's ``exp_avg``."""
    state = optimizer.state.get(param, {})
    for key in ("momentum_buffer", "exp_avg"):
        if torch.is_tensor(state.get(key)):
            return state[key]
    raise ValueError(
        "SNFS grows by momentum, but the optimizer keeps none for this weight yet; train with "
        "SGD with momentum > 0 (the default) or Adam, and update after the first step"
    )


@register("training", "snfs", section="4")
class SNFS(DynamicSparse):
    """Sparse momentum, sparse networks from scratch (Dettmers & Zettlemoyer 2019).

    Rule: every update (once per epoch by default), drop the fraction ``p`` (0.5, cosine
    decay) of each layer's kept weights with the smallest ``|w|``; hand the total back to
    the layers in proportion to the mean ``|momentum|`` of their kept weights; in each
    layer grow the free weights with the largest ``|momentum|``, starting at zero.  The
    momentum is dense: masks pass dense gradients and the masked weights are re-zeroed
    after every step.  Unstructured; ERK budget.
    """

    name = "snfs"
    mask_dense_grad = True
    default_drop_fraction = 0.5
    default_frequency = "epoch"

    def on_step_end(self, trainer: Trainer) -> None:
        # Dense gradients moved the masked weights: put them back to zero, keep the momentum.
        with torch.no_grad():
            for n in self.masked_names(trainer.model):
                masks.dense_weight(trainer.model, n).mul_(masks.get_mask(trainer.model, n))
        super().on_step_end(trainer)

    def _momentum(self, trainer: Trainer, name: str) -> torch.Tensor:
        return momentum_of(trainer.optimizer, masks.dense_weight(trainer.model, name))

    def grow_scores(self, trainer: Trainer, name: str) -> torch.Tensor:
        return self._momentum(trainer, name).detach().abs()

    def plan(self, trainer: Trainer, names: list[str], fraction: float) -> dict[str, tuple]:
        """Drop per layer; regrow the total in proportion to each layer's mean momentum."""
        model = trainer.model
        drops, weight, capacity = {}, {}, {}
        for n in names:
            mask = masks.get_mask(model, n).bool()
            kept = int(mask.sum())
            drops[n] = round(fraction * kept)
            weight[n] = float(self._momentum(trainer, n).abs()[mask].mean()) if kept else 0.0
            capacity[n] = mask.numel() - (kept - drops[n])
        grows = apportion(sum(drops.values()), weight, capacity)
        return {n: (drops[n], grows[n]) for n in names}

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """Dense momentum needs the dense weight gradient every step: ``2 * sparse + dense``."""
        return 2 * sparse + dense


@register("training", "dsr", section="4")
class DSR(DynamicSparse):
    """Dynamic sparse reparameterization (Mostafa & Wang 2019).

    Rule: every update (once per epoch by default), prune the kept weights with
    ``|w| < H``, a threshold shared by all layers; if fewer than ``(1 - tolerance) N`` were
    pruned double ``H``, if more than ``(1 + tolerance) N`` halve it, where
    ``N = drop_fraction * n_kept``.  The ``K`` pruned weights are regrown at random free
    positions, spread over layers in proportion to their surviving weights.  The total
    stays exact, while layer densities move.  Unstructured; uniform budget by default.
    """

    name = "dsr"
    default_budget = "uniform"
    default_decay = "constant"
    default_drop_fraction = 0.1
    default_frequency = "epoch"

    def __init__(
        self,
        sparsity: float,
        *,
        threshold: float = 1e-3,
        tolerance: float = 0.1,
        drop_fraction: float | None = None,
        decay: str | None = None,
        update_frequency: int | str | None = None,
        end: float = 0.75,
        **common: Any,
    ) -> None:
        super().__init__(
            sparsity,
            drop_fraction=drop_fraction,
            decay=decay,
            update_frequency=update_frequency,
            end=end,
            **common,
        )
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.initial_threshold = threshold
        self.tolerance = check_fraction("tolerance", tolerance)

    def on_train_begin(self, trainer: Trainer) -> None:
        super().on_train_begin(trainer)
        self.threshold = self.initial_threshold

    def grow_scores(self, trainer: Trainer, name: str) -> torch.Tensor:
        shape = masks.get_mask(trainer.model, name).shape
        return torch.rand(shape, generator=self._generator, dtype=torch.float64)

    def plan(self, trainer: Trainer, names: list[str], fraction: float) -> dict[str, tuple]:
        """Threshold per layer; regrow in proportion to the surviving weights."""
        model = trainer.model
        drops, survivors, capacity = {}, {}, {}
        for n in names:
            mask = masks.get_mask(model, n).bool()
            small = mask & (masks.weight(model, n).detach().abs() < self.threshold)
            drops[n] = int(small.sum())
            survivors[n] = float(mask.sum()) - drops[n]
            capacity[n] = mask.numel() - int(survivors[n])
        pruned = sum(drops.values())
        wanted = fraction * n_active(model, names)
        # The adaptive threshold: aim the next update at `wanted` pruned weights.
        if pruned < (1 - self.tolerance) * wanted:
            self.threshold *= 2
        elif pruned > (1 + self.tolerance) * wanted:
            self.threshold /= 2
        grows = apportion(pruned, survivors, capacity)
        return {n: (drops[n], grows[n]) for n in names}

    def update(self, trainer: Trainer) -> None:
        super().update(trainer)
        self.log[-1]["threshold"] = self.threshold


@register("training", "deepr", section="4")
class DeepR(StaticSparse):
    """Deep rewiring (Bellec et al. 2018).

    Rule: each kept connection has a fixed sign ``s``; after every optimizer step its
    weight also moves by ``-lr * alpha * s + sqrt(2 * lr * T) * noise`` (an L1 pull toward
    zero and Gaussian exploration at temperature ``T``); a connection whose weight crosses
    zero (``s * w < 0``) goes dormant, and as many dormant connections of the same layer,
    chosen uniformly at random, are activated at zero with a random sign.  Each layer keeps
    its number of connections exactly.  Unstructured; uniform budget by default.
    """

    name = "deepr"
    default_budget = "uniform"
    supported_patterns = ("unstructured",)

    def __init__(
        self,
        sparsity: float,
        *,
        l1: float = 1e-5,
        temperature: float = 1e-8,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if l1 < 0 or temperature < 0:
            raise ValueError(f"l1 and temperature must be >= 0, got {l1} and {temperature}")
        self.l1, self.temperature = l1, temperature

    def on_train_begin(self, trainer: Trainer) -> None:
        super().on_train_begin(trainer)
        model = trainer.model
        # The sign a connection was born with; zero weights draw a random one.
        self.signs = {}
        for n in self.masked_names(model):
            w = masks.dense_weight(model, n).detach()
            coin = torch.randint(0, 2, w.shape, generator=self._generator).to(w) * 2 - 1
            # flat views of these are updated in place at every step
            self.signs[n] = torch.where(w != 0, torch.sign(w), coin).contiguous()

    def on_step_end(self, trainer: Trainer) -> None:
        model, opt = trainer.model, trainer.optimizer
        lr = opt.param_groups[0]["lr"]
        noise_scale = math.sqrt(2 * lr * self.temperature)
        rewired = 0
        with torch.no_grad():
            for n in self.masked_names(model):
                w = masks.dense_weight(model, n)
                # a copy only where the layout is not contiguous (channels-last), written back
                flat = w.view(-1) if w.is_contiguous() else w.flatten()
                keep = (masks.get_mask(model, n) != 0).flatten()
                died, born = self._rewire(flat, keep, self.signs[n].view(-1), lr, noise_scale)
                if flat.data_ptr() != w.data_ptr():
                    w.copy_(flat.view(w.shape))
                if died.numel() == 0:
                    continue
                changed = torch.zeros_like(keep)
                changed[died] = True
                changed[born] = True  # born at zero, with no optimizer state
                reset_state(opt, w, changed.view(w.shape))
                masks.set_mask(model, n, keep.view(w.shape))
                rewired += died.numel()
        if rewired:
            self.log.append({"step": trainer.step, "rewired": rewired})

    def _rewire(self, flat, keep, sign, lr, noise_scale) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's step on its flat weights, kept-mask and signs, in place; returns the
        indices of the connections that died and of those born.

        Only the kept connections move and only the dead ones are replaced, so every draw is
        per kept or per rewired connection: at 95% sparsity, noise for every weight and a
        random score for every free one took ten times the training step.
        """
        kept = keep.nonzero().flatten()
        s = sign[kept]
        noise = torch.randn(kept.numel(), generator=self._generator).to(flat) * noise_scale
        moved = flat[kept] + (-lr * self.l1 * s + noise)
        flat[kept] = moved
        died = kept[moved * s < 0]
        if died.numel() == 0:
            return died, died
        keep[died] = False
        free = (~keep).nonzero().flatten()  # the dead ones may be drawn again
        born = free[sample_without_replacement(free.numel(), died.numel(), self._generator)]
        keep[born] = True
        coin = torch.randint(0, 2, (born.numel(),), generator=self._generator) * 2 - 1
        sign[born] = coin.to(sign)
        flat[died] = 0
        flat[born] = 0
        return died, born


@register("training", "topkast", section="4")
class TopKAST(StaticSparse):
    """Top-K always sparse training (Jayakumar et al. 2020).

    Rule: keep dense weights ``theta``; the forward pass uses the set ``A`` of the top-D
    ``|theta|`` (density ``1 - sparsity`` per the budget) and the gradient reaches a larger
    set ``B`` of the top ``|theta|`` at ``backward_sparsity`` (default: twice the forward
    density); weights outside ``B`` are not updated and lose their optimizer state.  An
    exploration penalty adds ``penalty * theta`` to the gradient on ``A`` and
    ``penalty * theta / D`` on ``B \\ A``, so that weights which are not used must stay
    useful to survive.  The sets are re-selected every ``update_frequency`` steps.
    Supports every pattern.
    """

    name = "topkast"
    mask_dense_grad = True

    def __init__(
        self,
        sparsity: float,
        *,
        backward_sparsity: float | None = None,
        penalty: float = 1e-4,
        update_frequency: int = 1,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if backward_sparsity is None:
            backward_sparsity = max(0.0, 1 - 2 * (1 - self.sparsity))
        if not 0 <= backward_sparsity <= self.sparsity:
            raise ValueError(
                f"backward_sparsity must be in [0, sparsity={self.sparsity}]: the backward set "
                f"contains the forward set; got {backward_sparsity}"
            )
        if update_frequency < 1:
            raise ValueError(f"update_frequency must be >= 1, got {update_frequency}")
        self.backward_sparsity = float(backward_sparsity)
        self.penalty = penalty
        self.update_frequency = update_frequency
        self.backward: dict[str, torch.Tensor] = {}

    def _scores(self, model):
        return {n: masks.dense_weight(model, n).detach().abs() for n in self.names(model)}

    def reselect(self, trainer: Trainer) -> None:
        """Choose ``A`` (the masks) and ``B`` from the current dense magnitudes."""
        model = trainer.model
        scores = self._scores(model)
        forward = self.select(model, scores)
        self.backward = self.select(model, scores, self.backward_sparsity)
        for n, keep in forward.items():
            if masks.is_masked(model, n):
                masks.set_mask(model, n, keep)  # dense_grad masks keep the dense values
            else:
                masks.attach(model, n, keep, dense_grad=True)

    def init_masks(self, trainer: Trainer) -> None:
        self.reselect(trainer)

    def on_step_begin(self, trainer: Trainer) -> None:
        if trainer.step > 0 and trainer.step % self.update_frequency == 0:
            self.reselect(trainer)

    def on_after_backward(self, trainer: Trainer) -> None:
        model = trainer.model
        density = 1 - self.sparsity
        for n, b in self.backward.items():
            theta = masks.dense_weight(model, n)
            if theta.grad is None:
                continue
            a = masks.get_mask(model, n).bool()
            with torch.no_grad():
                scale = torch.where(a, 1.0, 1.0 / density) * self.penalty
                theta.grad.add_(scale * theta)
                theta.grad.mul_(b)
            reset_state(trainer.optimizer, theta, ~b)

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """Forward and input gradient on ``A``, weight gradient on ``B``."""
        density_b = 1 - self.backward_sparsity
        density_a = 1 - self.sparsity
        return 2 * sparse + sparse * (density_b / density_a if density_a else 1.0)


@register("training", "dpf", section="4")
class DPF(StaticSparse):
    """Dynamic pruning with feedback (Lin et al. 2020).

    Rule: keep dense weights ``w`` and train them with the gradient of the pruned model,
    ``w <- w - lr * grad f(m * w)`` (the error of pruning is fed back); every
    ``update_frequency`` (16) steps re-select the mask ``m`` as the top ``|w|`` of the dense
    weights at the sparsity of a cubic schedule that reaches the target at ``end`` (a
    fraction of training), so pruned weights can return.  The result is the masked model.
    Supports every pattern and budget.
    """

    name = "dpf"
    default_budget = "global"
    mask_dense_grad = True

    def __init__(
        self,
        sparsity: float | None,
        *,
        update_frequency: int = 16,
        end: float = 0.75,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if update_frequency < 1:
            raise ValueError(f"update_frequency must be >= 1, got {update_frequency}")
        self.update_frequency = update_frequency
        self.end = check_fraction("end", end)

    def target_at(self, step: int) -> float:
        """The scheduled sparsity at ``step`` (cubic from 0 to the target)."""
        if self.pattern.fixed_sparsity is not None:
            return self.sparsity
        return cubic(step, self.sparsity, 0, self.end_step, frequency=self.update_frequency)

    def init_masks(self, trainer: Trainer) -> None:
        self.end_step = round(self.end * trainer.total_steps)
        self.reselect(trainer)

    def reselect(self, trainer: Trainer) -> None:
        """Masks from the dense magnitudes at the scheduled sparsity."""
        model = trainer.model
        scores = {n: masks.dense_weight(model, n).detach().abs() for n in self.names(model)}
        target = self.target_at(trainer.step)
        for n, keep in self.select(model, scores, target).items():
            if masks.is_masked(model, n):
                masks.set_mask(model, n, keep)
            else:
                masks.attach(model, n, keep, dense_grad=True)
        self.log.append({"step": trainer.step, "sparsity": target})

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % self.update_frequency == 0:
            self.reselect(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        # Whatever the step count, training ends exactly at the target sparsity.
        if self.log and self.log[-1]["sparsity"] != self.sparsity:
            self.reselect(trainer)

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """The dense weights get a dense gradient every step: ``2 * sparse + dense``."""
        return 2 * sparse + dense
