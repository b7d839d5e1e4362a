"""Lottery tickets: iterative magnitude pruning with rewinding, and early-bird tickets.

Survey section 8.3 ("lottery ticket hypothesis") and 2.4.  A *ticket* is a mask found by
pruning a trained network, applied to the weights of an earlier point of the same run.
Two baselines tell whether the ticket matters: the same mask with freshly drawn weights
(random re-initialisation) and a random mask with the same layer sparsities.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import masks
from ..pruning import prune
from ..registry import register
from ..scheduled import ScheduledPruning
from ..schedules import iterative
from ..train import Callback, Trainer, evaluate, fit
from .base import TrainingMethod, independent_copy

REWINDS = ("init", "step", "lr")
BASELINES = ("reinit", "random_mask")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's weights, with plain keys (masks applied)."""
    return {k: v.detach().clone() for k, v in masks.plain_state_dict(model).items()}


def rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load the saved weights ``state`` into ``model`` and keep its masks.

    The surviving weights become exactly the saved ones and the pruned ones stay zero.
    """
    return masks.load_state_dict(model, state)


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with the same masks and freshly drawn weights (``seed``).

    Every submodule with ``reset_parameters`` is re-initialised its usual way.
    """
    kept = {n: m.detach().clone() for n, m in masks.masks(model).items()}
    fresh = masks.remove(independent_copy(model))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    for n, m in kept.items():
        masks.attach(fresh, n, m)
    return fresh


def random_masks(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random masks that keep as many weights in each layer as the model's masks do."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in masks.masks(model).items():
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[torch.randperm(m.numel(), generator=gen)[: int(m.count_nonzero())]] = True
        out[n] = keep.reshape(m.shape)
    return out


@register("training", "imp", section="8")
class IMP(TrainingMethod):
    """Iterative magnitude pruning, lottery tickets (Frankle & Carbin 2019).

    Rule: train; prune the smallest-magnitude weights so that after round ``r`` of
    ``rounds`` the density is ``(1 - sparsity)^(r / rounds)``; rewind; train again.
    ``rewind`` chooses what the pruned network restarts from: ``"init"`` the weights at
    initialisation ``theta_0``, ``"step"`` the weights ``theta_k`` after ``rewind_step``
    optimizer steps (Frankle et al. 2020), ``"lr"`` the trained weights with the
    learning-rate schedule restarted (Renda et al. 2020).  Every round trains ``epochs``
    epochs with a fresh optimizer.  ``baselines`` (``"reinit"``: the ticket's mask with new
    random weights; ``"random_mask"``: a random mask with the ticket's layer sparsities,
    on the rewound weights) are trained alongside each round (``baseline_rounds="all"``)
    or the last one only (``"last"``).  Supports every pattern and budget; ``criterion``
    swaps magnitude for any registered criterion.

    After :meth:`fit`, ``rounds_table`` has one row per round (sparsity, validation
    accuracy of the ticket and of each baseline) and ``tickets`` the masks of each round.
    """

    name = "imp"
    default_budget = "global"

    def __init__(
        self,
        sparsity: float | None,
        *,
        rounds: int = 5,
        rewind: str = "init",
        rewind_step: int | None = None,
        criterion: str = "magnitude",
        baselines: Sequence[str] = (),
        baseline_rounds: str = "all",
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive int, got {rounds!r}")
        if rewind not in REWINDS:
            raise ValueError(f"rewind must be one of {', '.join(REWINDS)}, got {rewind!r}")
        if isinstance(baselines, str):
            baselines = (baselines,)
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        if baseline_rounds not in ("all", "last"):
            raise ValueError(f"baseline_rounds must be 'all' or 'last', got {baseline_rounds!r}")
        if rewind_step is not None and rewind_step < 0:
            raise ValueError(f"rewind_step must be >= 0, got {rewind_step}")
        self.rounds, self.rewind, self.rewind_step = rounds, rewind, rewind_step
        self.criterion = criterion
        self.baselines = tuple(baselines)
        self.baseline_rounds = baseline_rounds

    def round_sparsity(self, r: int) -> float:
        """Sparsity after pruning round ``r`` (0 = dense): the ``iterative`` schedule."""
        if r == 0:
            return 0.0
        return iterative(r - 1, self.sparsity, 0, self.rounds, frequency=1)

    def rounds_of(self, model: nn.Module, steps_per_epoch: int | None = None) -> Iterator[int]:
        """The rounds, for a loop of your own: yields ``r = 0 .. rounds``.

        Train ``model`` in the body of each round with a fresh optimizer.  Before round
        ``r > 0`` is yielded, ``model`` is pruned to :meth:`round_sparsity` and rewound;
        ``tickets`` collects the masks.  With ``rewind="step"`` or ``"lr"`` the rewinding
        point is taken while round 0 trains, so drive this method in round 0 with a
        :class:`~sparsity_lab.sparsifier.Sparsifier` (``steps_per_epoch`` is the default
        ``rewind_step``: the end of the first epoch)::

            for r in imp.rounds_of(model, len(loader)):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                sparsifier = Sparsifier(imp).prepare(model, optimizer, ...)
                ...  # your loop, as for any method
        """
        self._theta0 = snapshot(model)
        # the weights rounds r > 0 restart from, taken while round 0 trains (not for "init")
        self.rewind_point: dict[str, torch.Tensor] | None = None
        step = self.rewind_step if self.rewind_step is not None else steps_per_epoch
        self._save_step = 0 if self.rewind == "init" else step
        if self._save_step is None:
            raise ValueError(
                f"rewind={self.rewind!r} rewinds to a step of round 0: pass steps_per_epoch "
                f"(the default rewind_step) or set rewind_step"
            )
        self.tickets: list[dict[str, torch.Tensor]] = []
        for r in range(self.rounds + 1):
            if r > 0:
                if self.rewind != "init" and self.rewind_point is None:
                    raise ValueError(
                        f"rewind_step={self._save_step} is beyond the steps round 0 trained; "
                        f"choose a smaller rewind_step (or drive round 0 with a Sparsifier)"
                    )
                prune(model, self.criterion, self.round_sparsity(r), **self.prune_options())
                self.tickets.append({n: m.detach().clone() for n, m in masks.masks(model).items()})
                if self.rewind != "lr":
                    rewind(model, self._theta0 if self.rewind == "init" else self.rewind_point)
            self._round = r
            yield r

    def on_train_begin(self, trainer: Trainer) -> None:
        if getattr(self, "_round", None) == 0 and self._save_step == 0:
            self.rewind_point = snapshot(trainer.model)

    def on_step_end(self, trainer: Trainer) -> None:
        if self._round == 0 and trainer.step == self._save_step:
            self.rewind_point = snapshot(trainer.model)

    def fit(
        self,
        model: nn.Module,
        train_loader: Any,
        val_loader: Any = None,
        *,
        epochs: int = 10,
        callbacks: Iterable[Callback] = (),
        test_loader: Any = None,
        **fit_options: Any,
    ) -> pd.DataFrame:
        """Run ``rounds + 1`` trainings (dense, then each pruning round); returns the
        histories with a ``round`` column.  ``model`` ends as the last round's ticket.

        With ``test_loader`` the rounds table also holds each network's test accuracy.
        The trained baselines stay in ``baseline_models[(round, kind)]`` for inspection.
        ``callbacks`` follow the rounds that make the ticket, not the baselines' trainings:
        those are a control experiment, whose cost and logs are not the ticket's.
        """
        callbacks = list(callbacks)
        frames, rows = [], []
        self.baseline_models: dict[tuple[int, str], nn.Module] = {}

        def tested(m: nn.Module) -> dict[str, float]:
            return (
                {}
                if test_loader is None
                else {"test_accuracy": evaluate(m, test_loader)["accuracy"]}
            )

        def train(m: nn.Module, extra=(), *, control: bool = False) -> pd.DataFrame:
            return fit(
                m,
                train_loader,
                val_loader,
                epochs=epochs,
                callbacks=[*extra, *(() if control else callbacks)],
                **fit_options,
            )

        for r in self.rounds_of(model, len(train_loader)):
            history = train(model, [self])
            frames.append(history.assign(round=r, sparsity=self.round_sparsity(r)))
            row = {
                "round": r,
                "sparsity": self.round_sparsity(r),
                "val_accuracy": history["val_accuracy"].iloc[-1],
                **tested(model),
            }
            if r == self.rounds or (r > 0 and self.baseline_rounds == "all"):
                row.update(
                    self._baselines(model, r, self._theta0, self.rewind_point, train, tested)
                )
            rows.append(row)
        self.rounds_table = pd.DataFrame(rows)
        return pd.concat(frames, ignore_index=True)

    def _baselines(self, model, r, theta0, theta_k, train, tested) -> dict[str, float]:
        results = {}
        start = theta_k if self.rewind == "step" else theta0
        for kind in self.baselines:
            seed = self.seed + 1000 * r  # a new draw per round, repeatable
            if kind == "reinit":
                other = reinitialize(model, seed)
            else:
                other = rewind(masks.remove(independent_copy(model)), start)
                for n, keep in random_masks(model, seed).items():
                    masks.attach(other, n, keep)
            history = train(other, control=True)
            results[f"{kind}_val_accuracy"] = history["val_accuracy"].iloc[-1]
            results.update({f"{kind}_{k}": v for k, v in tested(other).items()})
            self.baseline_models[(r, kind)] = other
        return results


def mask_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Normalised Hamming distance between two sets of masks: the share of entries that differ."""
    differ = sum(int((a[n].bool() != b[n].bool()).sum()) for n in a)
    return differ / sum(a[n].numel() for n in a)


@register("training", "early_bird", section="8")
class EarlyBird(TrainingMethod):
    """Early-bird tickets (You et al. 2020).

    Rule: while training dense, compute after each epoch the mask that pruning to the
    target would give, and the normalised Hamming distance to the previous epoch's mask;
    when the last ``window`` (5) distances are all below ``epsilon`` (0.1) the mask has
    settled: draw the ticket (prune for real) and train the pruned network for the rest
    of the run.  If no ticket appears by ``max_search`` (a fraction of the epochs) it is
    drawn then.  The paper uses channel masks from BatchNorm scales; here any criterion,
    pattern and budget (default: magnitude, unstructured, global).
    """

    name = "early_bird"
    default_budget = "global"

    def __init__(
        self,
        sparsity: float | None,
        *,
        epsilon: float = 0.1,
        window: int = 5,
        max_search: float = 0.5,
        criterion: str = "magnitude",
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if not 0 < epsilon <= 1:
            raise ValueError(f"epsilon must be a mask distance in (0, 1], got {epsilon}")
        if window < 1:
            raise ValueError(f"window must be at least 1 epoch, got {window}")
        if not 0 < max_search <= 1:
            raise ValueError(
                f"max_search must be a fraction of training in (0, 1], got {max_search}"
            )
        self.epsilon, self.window, self.max_search = epsilon, window, max_search
        self.criterion = criterion
        self._pruner = ScheduledPruning(criterion, self.sparsity, **self.prune_options())

    def on_train_begin(self, trainer: Trainer) -> None:
        self.distances: list[float] = []
        self.found_epoch: int | None = None
        self._previous: dict[str, torch.Tensor] | None = None
        self._pruner.current = 0.0

    def candidate(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The masks pruning would give now (on a copy; the model is not touched)."""
        trial = prune(copy.deepcopy(model), self.criterion, self.sparsity, **self.prune_options())
        return {n: m.detach().bool() for n, m in masks.masks(trial).items()}

    def on_epoch_end(self, trainer: Trainer) -> None:
        row = trainer.history[-1]
        if self.found_epoch is None:
            current = self.candidate(trainer.model)
            if self._previous is not None:
                self.distances.append(mask_distance(current, self._previous))
                row["mask_distance"] = self.distances[-1]
            self._previous = current
            recent = self.distances[-self.window :]
            settled = len(recent) == self.window and max(recent) < self.epsilon
            out_of_time = trainer.epoch + 1 >= max(1, round(self.max_search * trainer.epochs))
            if settled or out_of_time:
                self.found_epoch = trainer.epoch
                self._pruner.apply(trainer, self.sparsity)  # also clears the pruned momentum
        row["sparsity"] = self._pruner.current
