"""What every training-time method shares (survey sections 2.4 and 4).

A training method is a :class:`~sparsity_lab.train.Callback` with a :meth:`~TrainingMethod.fit`
that runs the library's training loop with itself attached, so every method is used the
same way::

    method = sparsity_lab.registry.get("rigl")(0.9, budget="erk")
    history = method.fit(model, train_loader, val_loader, epochs=10, lr=0.1)

Methods that train several times (lottery tickets) override ``fit``; all others only hook
into the loop.  This module also holds the pieces they share: choosing fresh masks from
scores (:func:`select_masks`), splitting a whole number in proportion (:func:`apportion`)
and counting training FLOPs (:class:`TrainingFlops`).
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from .. import masks, patterns, registry
from ..accounting import positions
from ..budgets import largest_remainder
from ..patterns import Pattern, target_sparsity
from ..selection import select
from ..targets import default_targets, resolve
from ..train import Callback, Trainer, fit


def independent_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose masks can be removed without touching ``model``.

    ``copy.deepcopy`` of a masked module shares torch's generated parametrized class with
    the original, so removing a mask from the copy would remove the attribute from the
    original too; a pickle round trip rebuilds the masks on classes of the copy's own.
    """
    return pickle.loads(pickle.dumps(model))


def check_fraction(name: str, value: float, *, allow_one: bool = True) -> float:
    """Raise a ValueError unless ``value`` is a fraction of training in [0, 1]."""
    high_ok = value <= 1 if allow_one else value < 1
    if not isinstance(value, (int, float)) or not (0 <= value and high_ok):
        upper = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must be a fraction of training in [0, {upper}, got {value!r}")
    return float(value)


#: The options every training method takes (see :class:`TrainingMethod`).
COMMON_OPTIONS = ("pattern", "budget", "targets", "exclude", "dense", "seed")


class TrainingMethod(Callback):
    """Base class of the registered training algorithms.

    Common options: ``sparsity`` (fraction of zeros over the pruned tensors; ``None`` for
    N:M patterns, whose sparsity is 1 - N/M), ``pattern``, ``budget`` (how the zeros are
    spread over layers; each method has its paper's default), ``targets`` (default: every
    Linear/Conv weight), ``exclude`` (left out of pruning and of the count), ``dense``
    (kept dense but counted) and ``seed`` (random masks and growth).
    """

    name: ClassVar[str] = "training"
    default_budget: ClassVar[str] = "uniform"
    #: Patterns the method supports; ``None`` means every pattern.
    supported_patterns: ClassVar[tuple[str, ...] | None] = None
    #: Whether the trained model is dense (to be pruned afterwards, as CrAM's is).
    ends_dense: ClassVar[bool] = False

    def __init__(
        self,
        sparsity: float | None,
        *,
        pattern: str | Pattern = "unstructured",
        budget: str | None = None,
        targets: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        dense: Iterable[str] = (),
        seed: int = 0,
    ) -> None:
        self._setup(
            sparsity,
            pattern=pattern,
            budget=budget,
            targets=targets,
            exclude=exclude,
            dense=dense,
            seed=seed,
        )

    @classmethod
    def options(cls) -> list[str]:
        """The keyword options of this method: its own and, where its constructor passes
        ``**common`` on, the shared ones (:data:`COMMON_OPTIONS`)."""
        found: set[str] = set()
        for klass in cls.__mro__:  # follow **options up to the constructor that takes them
            if "__init__" not in vars(klass) or not issubclass(klass, TrainingMethod):
                continue
            params = inspect.signature(klass.__init__).parameters.values()
            found |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        else:
            found |= set(COMMON_OPTIONS)
        return sorted(found)

    def _setup(self, sparsity: float | None, **common: Any) -> None:
        """The options every method shares (see the class docstring); subclasses pass them
        on as ``**common`` instead of listing them again."""
        unknown = sorted(set(common) - set(COMMON_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)} for {self.name!r}; it accepts "
                f"{', '.join(self.options())}"
            )
        pattern = common.get("pattern", "unstructured")
        budget = common.get("budget")
        targets = common.get("targets")
        exclude, dense = common.get("exclude", ()), common.get("dense", ())
        seed = common.get("seed", 0)
        self.pattern = patterns.get(pattern)
        if self.supported_patterns is not None and self.pattern.name not in self.supported_patterns:
            raise ValueError(
                f"{self.name} supports the patterns {', '.join(self.supported_patterns)}, got "
                f"{self.pattern!r}; use one of those or a method that supports any pattern"
            )
        self.sparsity = target_sparsity(self.pattern, sparsity)
        self.budget = budget or self.default_budget
        registry.get(self.budget, "budget")  # a misspelt budget fails now, with suggestions
        self.targets = None if targets is None else list(targets)
        self.exclude = list(exclude)
        self.dense = list(dense)
        self.seed = seed
        self.log: list[dict[str, Any]] = []

    # --- running -----------------------------------------------------------------------

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
        """Train ``model`` in place with this method; returns the per-epoch history.

        ``fit_options`` go to :func:`sparsity_lab.train.fit` (optimizer, lr, momentum,
        weight_decay, lr_schedule, seed, ...).  ``callbacks`` run after the method's hooks.
        """
        return fit(
            model,
            train_loader,
            val_loader,
            epochs=epochs,
            callbacks=[self, *callbacks],
            **fit_options,
        )

    # --- what is pruned ----------------------------------------------------------------

    def names(self, model: nn.Module) -> list[str]:
        """The pruned tensors: targets minus exclusions (dense ones included)."""
        return resolve(model, self.targets, self.exclude, self.dense)

    def masked_names(self, model: nn.Module) -> list[str]:
        """The pruned tensors that carry a mask (the targets not kept dense)."""
        return [n for n in self.names(model) if n not in set(self.dense)]

    def prune_options(self) -> dict[str, Any]:
        """The keywords of :func:`sparsity_lab.prune` that this method's options fix."""
        return {
            "pattern": self.pattern,
            "budget": self.budget,
            "targets": self.targets,
            "exclude": self.exclude,
            "dense": self.dense,
            "seed": self.seed,
        }

    def select(
        self, model: nn.Module, scores: Mapping[str, torch.Tensor], sparsity: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Fresh keep-masks from element ``scores`` at ``sparsity`` (default: the target).

        Unlike :func:`sparsity_lab.prune`, earlier masks are ignored, so entries may come
        back: this is what methods that re-select every step (DPF, Top-KAST, edge-popup,
        CrAM's compression) need.
        """
        return select_masks(
            model,
            self.names(model),
            scores,
            self.sparsity if sparsity is None else sparsity,
            pattern=self.pattern,
            budget=self.budget,
            dense=self.dense,
        )

    # --- cost --------------------------------------------------------------------------

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """FLOPs per example of one training step, from the forward FLOPs of the current
        masks (``sparse``) and of the dense model (``dense``).

        Default: forward + backward to the inputs + backward to the weights, each costing
        one sparse forward (the usual 3x rule).
        """
        return 3 * sparse

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity}, budget={self.budget!r})"


def select_masks(
    model: nn.Module,
    names: list[str],
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    pattern: Pattern,
    budget: str,
    dense: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Bool keep-masks that prune the lowest-scoring groups, ignoring earlier masks.

    The budget spreads ``sparsity`` over ``names`` exactly as :func:`sparsity_lab.prune`
    does; tensors in ``dense`` get no mask.
    """
    dense = set(dense)
    for_count = {n: masks.weight(model, n) if n in dense else scores[n] for n in names}
    return select(for_count, sparsity, pattern=pattern, budget=budget, dense=dense)


def apportion(total: int, weights: Mapping[str, float], capacity: Mapping[str, int]) -> dict:
    """Whole numbers ``k[name] <= capacity[name]`` summing to ``total``, ``k`` ∝ ``weights``.

    What a full layer cannot take goes to the others in proportion (water filling); the
    shares are then rounded by :func:`~sparsity_lab.budgets.largest_remainder`.  Used to
    hand out regrown connections across layers (DSR, SNFS).
    """
    if total > sum(capacity.values()):
        raise ValueError(f"cannot place {total} connections in {sum(capacity.values())} slots")
    names = list(weights)
    desired = dict.fromkeys(names, 0.0)
    left, open_ = float(total), [n for n in names if capacity[n] > 0]
    while left > 1e-9 and open_:
        w_sum = sum(max(weights[n], 0.0) for n in open_)
        share = {
            n: left * (max(weights[n], 0.0) / w_sum if w_sum > 0 else 1 / len(open_)) for n in open_
        }
        full = [n for n in open_ if desired[n] + share[n] >= capacity[n]]
        if not full:
            for n in open_:
                desired[n] += share[n]
            break
        for n in full:
            left -= capacity[n] - desired[n]
            desired[n] = float(capacity[n])
        open_ = [n for n in open_ if n not in full]
    split = largest_remainder(total, [desired[n] for n in names], [capacity[n] for n in names])
    return dict(zip(names, split, strict=True))


def n_active(model: nn.Module, names: Iterable[str]) -> int:
    """Number of weights kept by the masks of ``names``."""
    return sum(int(masks.get_mask(model, n).count_nonzero()) for n in names)


class TrainingFlops(Callback):
    """Counts training FLOPs, as in the RigL paper's accounting (Evci et al. 2020).

    Per example, a forward pass costs ``2 * nonzeros * positions`` per layer (see
    :mod:`sparsity_lab.accounting`); the method's :meth:`TrainingMethod.step_flops` turns
    the sparse and dense forward costs into the cost of its step (3x forward by default,
    more when it needs dense gradients).  Only pruned layers are counted.  Adds a
    cumulative ``train_flops`` column to the history and keeps ``total``, and ``epochs``
    the epochs it saw (all of a method's trainings: IMP's rounds, for instance).
    """

    def __init__(self, method: TrainingMethod | None = None, names: list[str] | None = None):
        self.method = method
        self.names = names
        self.total = 0.0
        self.epochs = 0
        self._positions: dict[str, int] | None = None
        # each mask's nonzeros, with the mask and its version they were counted on: a
        # count over a large mask at every step costs as much as a small layer's step
        self._nonzeros: dict[str, tuple[torch.Tensor, int, int]] = {}

    def _count_nonzeros(self, name: str, mask: torch.Tensor) -> int:
        """``mask.count_nonzero()``, counted again only after the mask changed (in place,
        which bumps its version, or replaced by another tensor)."""
        seen = self._nonzeros.get(name)
        if seen is not None and seen[0] is mask and seen[1] == mask._version:
            return seen[2]
        nnz = int(mask.count_nonzero())
        self._nonzeros[name] = (mask, mask._version, nnz)
        return nnz

    def on_after_backward(self, trainer: Trainer) -> None:
        model = trainer.model
        inputs, targets = trainer.batch
        if self._positions is None:
            self.names = self.names or default_targets(model)
            self._positions = positions(model, inputs[:1], self.names)
        sparse = dense = 0.0
        for n in self.names:
            p = self._positions.get(n, 1)
            w = masks.weight(model, n)
            mask = masks.get_mask(model, n)
            nnz = w.numel() if mask is None else self._count_nonzeros(n, mask)
            sparse += 2 * nnz * p
            dense += 2 * w.numel() * p
        per_example = (
            3 * sparse if self.method is None else self.method.step_flops(trainer, sparse, dense)
        )
        self.total += per_example * len(targets)

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.history[-1]["train_flops"] = self.total
        self.epochs += 1
