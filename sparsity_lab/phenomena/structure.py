"""Early structure adaptation: how early in dense training the final mask is known.

Survey section 2.4.2.  While a dense network trains, the mask that a criterion *would*
pick (magnitude top-k, APoZ channels, attention-head importance) is recorded after every
epoch without touching the model; comparing each epoch's mask with the final one (IoU,
Hamming distance) shows when the structure settles.  The early-bird rule (You et al.
2020) stops the search once consecutive masks differ by less than ``epsilon`` for
``window`` epochs; :func:`stabilisation_epoch` applies that rule to a recorded curve and
:func:`early_against_late` compares pruning there with pruning at the end.

Example::

    tracker = MaskTracker({"magnitude": criterion_selector("magnitude", 0.9)})
    sl.train.fit(model, train, val, epochs=10, callbacks=[tracker])
    tracker.table()  # criterion, epoch, iou_to_final, hamming_to_final, hamming_to_previous
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import flags as flags_mod
from .. import masks, recipes
from ..ephemeral.heads import head_importance
from ..methods.lottery import EarlyBird
from ..patterns import check_sparsity
from ..pruning import prune
from ..train import Callback, Trainer, fit

MaskSet = dict[str, torch.Tensor]
Selector = Callable[[nn.Module], MaskSet]


def _as_sets(a: torch.Tensor | Mapping, b: torch.Tensor | Mapping) -> tuple[dict, dict]:
    """Two masks or two ``{name: mask}`` dicts as dicts with the same keys and shapes."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        a, b = {"": a}, {"": b}
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise TypeError("compare two mask tensors or two {name: mask} dicts, not a mix")
    if set(a) != set(b):
        raise ValueError(
            f"the two mask sets name different tensors: {sorted(set(a) ^ set(b))}; "
            "compare masks of the same model"
        )
    for n in a:
        if a[n].shape != b[n].shape:
            raise ValueError(f"masks of {n!r} differ in shape: {a[n].shape} vs {b[n].shape}")
    return dict(a), dict(b)


def iou(a: torch.Tensor | Mapping, b: torch.Tensor | Mapping) -> float:
    """Intersection over union of the kept entries: ``|a AND b| / |a OR b|``.

    Takes two masks or two ``{name: mask}`` dicts (pooled over all tensors).  1 means
    the same kept set; two masks that keep nothing count as identical (1.0).
    """
    a, b = _as_sets(a, b)
    inter = sum(int((a[n].bool() & b[n].bool()).sum()) for n in a)
    union = sum(int((a[n].bool() | b[n].bool()).sum()) for n in a)
    return 1.0 if union == 0 else inter / union


def hamming(a: torch.Tensor | Mapping, b: torch.Tensor | Mapping) -> float:
    """Normalised Hamming distance: the share of entries on which two masks differ.

    Takes two masks or two ``{name: mask}`` dicts (pooled over all tensors); this is the
    distance the early-bird rule uses (:func:`sparsity_lab.methods.lottery.mask_distance`).
    """
    a, b = _as_sets(a, b)
    differ = sum(int((a[n].bool() != b[n].bool()).sum()) for n in a)
    return differ / sum(a[n].numel() for n in a)


def stabilisation_epoch(
    distances: Sequence[float],
    *,
    epsilon: float = 0.1,
    window: int = 5,
    epochs: Sequence[int] | None = None,
) -> int | None:
    """The early-bird rule on a recorded curve: the first epoch whose last ``window``
    distances to the previous mask are all below ``epsilon``, or None if none is.

    ``distances[i]`` is the distance recorded at ``epochs[i]`` (default ``i + 1``).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be a mask distance in (0, 1], got {epsilon}")
    epochs = list(range(1, len(distances) + 1)) if epochs is None else list(epochs)
    if len(epochs) != len(distances):
        raise ValueError(f"{len(distances)} distances but {len(epochs)} epochs; give one each")
    for i in range(window - 1, len(distances)):
        if max(distances[i - window + 1 : i + 1]) < epsilon:
            return epochs[i]
    return None


# --- what a criterion would pick -----------------------------------------------------------


def criterion_selector(
    method: str,
    sparsity: float,
    *,
    pattern: str = "unstructured",
    budget: str = "global",
    data: Any = None,
    targets: Iterable[str] | None = None,
    **options: Any,
) -> Selector:
    """A function ``model -> {name: bool keep-mask}``: the masks ``prune`` would attach now.

    It prunes a deep copy, so the model under training is never touched.  Any criterion,
    pattern and budget of :func:`sparsity_lab.prune` works; for APoZ channels, e.g.
    ``criterion_selector("apoz", 0.5, pattern="channel", data=batch, targets=[...])``.
    """
    check_sparsity(sparsity)
    targets = None if targets is None else list(targets)

    def select(model: nn.Module) -> MaskSet:
        trial = prune(
            copy.deepcopy(model),
            method,
            sparsity,
            pattern=pattern,
            budget=budget,
            data=data,
            targets=targets,
            **options,
        )
        return {n: m.detach().bool().clone() for n, m in masks.masks(trial).items()}

    return select


def head_selector(data: Any, sparsity: float, *, limit: int | None = 2) -> Selector:
    """A function ``model -> {attention layer: bool keep (n_heads,)}``: the heads with the
    highest importance (Michel et al. 2019), ranked across layers after each layer's
    scores are normalised, ``round(sparsity * n_heads)`` heads dropped in all."""
    check_sparsity(sparsity)

    def select(model: nn.Module) -> MaskSet:
        scores = head_importance(model, data, limit=limit)
        flat = torch.cat([s.flatten() for s in scores.values()])
        n_drop = round(sparsity * flat.numel())
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        # stable sort: tied heads are dropped in layer order, so the choice is repeatable
        keep[torch.sort(flat, stable=True).indices[:n_drop]] = False
        out, start = {}, 0
        for path, s in scores.items():
            out[path] = keep[start : start + s.numel()].reshape(s.shape).clone()
            start += s.numel()
        return out

    return select


class MaskTracker(Callback):
    """Records, at initialisation and after every epoch, the masks each selector picks.

    ``selectors`` maps a label to a function ``model -> {name: mask}`` (see
    :func:`criterion_selector`, :func:`head_selector`).  After training, ``epochs`` lists
    the number of epochs trained at each record (0 = initialisation) and ``records[label]``
    the masks; :meth:`table` turns them into distances.
    """

    def __init__(self, selectors: Mapping[str, Selector], *, at_init: bool = True) -> None:
        if not selectors:
            raise ValueError("give at least one selector, e.g. {'magnitude': selector}")
        self.selectors = dict(selectors)
        self.at_init = at_init

    def _record(self, model: nn.Module, epoch: int) -> None:
        self.epochs.append(epoch)
        for label, select in self.selectors.items():
            self.records[label].append(select(model))

    def on_train_begin(self, trainer: Trainer) -> None:
        self.epochs: list[int] = []
        self.records: dict[str, list[MaskSet]] = {label: [] for label in self.selectors}
        if self.at_init:
            self._record(trainer.model, 0)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._record(trainer.model, trainer.epoch + 1)

    def replay(self, model: nn.Module, states: Sequence[Mapping[str, torch.Tensor]]) -> MaskTracker:
        """Record from ``states`` (the weights at initialisation and after each epoch, as
        :func:`sparsity_lab.recipes.dense` keeps them in ``info["epoch_states"]``) what this
        tracker would have recorded watching that training; ``model`` (not changed) gives
        the architecture.  Returns the tracker."""
        work = copy.deepcopy(model).train()  # the mode the callbacks see during training
        self.epochs, self.records = [], {label: [] for label in self.selectors}
        for epoch, state in enumerate(states):
            if epoch or self.at_init:
                work.load_state_dict(state)
                self._record(work, epoch)
        return self

    def table(self) -> pd.DataFrame:
        """One row per selector and record: ``criterion, epoch, iou_to_final,
        hamming_to_final, hamming_to_previous`` (NaN at the first record)."""
        rows = []
        for label, recs in self.records.items():
            final = recs[-1]
            for i, (epoch, m) in enumerate(zip(self.epochs, recs, strict=True)):
                rows.append(
                    {
                        "criterion": label,
                        "epoch": epoch,
                        "iou_to_final": iou(m, final),
                        "hamming_to_final": hamming(m, final),
                        "hamming_to_previous": hamming(m, recs[i - 1]) if i else float("nan"),
                    }
                )
        return pd.DataFrame(rows)


# --- the experiment ---------------------------------------------------------------------


def fit_recipe(
    model: nn.Module,
    t: Any,
    *,
    epochs: int | None = None,
    callbacks: Iterable[Callback] = (),
    recipe: recipes.Recipe | None = None,
) -> pd.DataFrame:
    """Train ``model`` on the task's data with the recipe of its setting.

    The same loop as :func:`sparsity_lab.recipes.train_dense` (the recipe's optimizer,
    learning rate, schedule and batch size, the batch order of the task's seed), so a
    sparse network trained this way is trained like its dense counterpart; ``epochs``
    overrides the recipe's.  Returns the history.
    """
    recipe = recipe or recipes.recipe_for(t.model_name, t.data_name)
    training = recipe.training()
    if epochs is not None:
        training["epochs"] = epochs
    train, val, _ = t.loaders(recipe.batch_size)
    return fit(
        model, train, val, seed=t.seed, progress=False, callbacks=list(callbacks), **training
    )


def early_against_late(
    t: Any,
    sparsity: float,
    *,
    epochs: int | None = None,
    finetune_epochs: int = 2,
    epsilon: float = 0.1,
    window: int = 3,
    selectors: Mapping[str, Selector] | None = None,
) -> dict[str, Any]:
    """Track masks during dense training, then prune early (early-bird) or at the end.

    ``t`` is a :class:`sparsity_lab.recipes.Task`; every training follows its setting's
    recipe (:func:`fit_recipe`), ``epochs`` overriding the recipe's (a smoke run).  Both
    arms train for ``epochs + finetune_epochs`` epochs in all:

    * *late*: the recipe's dense model (:func:`sparsity_lab.recipes.dense`), pruned once by
      global magnitude and fine-tuned ``finetune_epochs`` with the mask fixed
      (:func:`sparsity_lab.recipes.finetune`, a fifth of the recipe's learning rate);
    * *early*: :class:`~sparsity_lab.methods.lottery.EarlyBird` from the same
      initialisation, which draws its ticket when the masks settle (``epsilon``,
      ``window``, searching the first ``epochs`` epochs) and trains it for the rest.

    The masks are tracked on a replay of the dense training (same initialisation, batch
    order and recipe); ``replay_iou`` is the IoU of its final magnitude mask with that of
    the recipe's dense model (1.0: the replay is the same run).

    Returns ``{"table": tracker.table(), "stable_epoch", "early_epoch", "early_accuracy",
    "late_accuracy", "dense_accuracy", "early_late_iou", "replay_iou", "early_flags",
    "late_flags", "dense_flags", "finetune_epochs", "finetune_flops"}`` (test accuracies
    and the sanity flags of :func:`sparsity_lab.recipes.evaluate_run`; the IoU is between
    the early-bird ticket and the late mask).
    """
    _, dense, info = recipes.dense(t.model_name, t.data_name, t.seed, epochs=epochs, **t.options)
    recipe = info["recipe"]
    selectors = selectors or {"magnitude": criterion_selector("magnitude", sparsity)}
    tracker = MaskTracker(selectors)
    replay = t.build()
    fit_recipe(replay, t, callbacks=[tracker], recipe=recipe)
    table = tracker.table()
    first = next(iter(selectors))
    # as in the early-bird method, the first distance is between epochs 1 and 2
    curve = table[(table["criterion"] == first) & (table["epoch"] > 1)]
    stable = stabilisation_epoch(
        list(curve["hamming_to_previous"].fillna(1.0)),
        epsilon=epsilon,
        window=window,
        epochs=list(curve["epoch"]),
    )
    magnitude = criterion_selector("magnitude", sparsity)
    replay_iou = iou(magnitude(replay), magnitude(dense))
    dense_run = recipes.evaluate_run(dense, t)
    prune(dense, "magnitude", sparsity)
    late_masks = {n: m.bool().clone() for n, m in masks.masks(dense).items()}
    budget = recipes.finetune(
        dense, t, finetune_epochs, lr=recipe.lr / 5, optimizer=recipe.optimizer, progress=False
    )
    late = recipes.evaluate_run(dense, t, target_sparsity=sparsity)
    total = recipe.epochs + finetune_epochs
    bird = EarlyBird(sparsity, epsilon=epsilon, window=window, max_search=recipe.epochs / total)
    start = t.build()
    train, val, _ = t.loaders(recipe.batch_size)
    bird.fit(
        start,
        train,
        val,
        seed=t.seed,
        progress=False,
        **{**recipe.training(), "epochs": total},
    )
    early = recipes.evaluate_run(start, t, target_sparsity=sparsity)
    bird_masks = {n: m.bool() for n, m in masks.masks(start).items()}
    return {
        "table": table,
        "stable_epoch": stable,
        "early_epoch": None if bird.found_epoch is None else bird.found_epoch + 1,
        "early_accuracy": early["accuracy"],
        "late_accuracy": late["accuracy"],
        "dense_accuracy": dense_run["accuracy"],
        "early_late_iou": iou(bird_masks, late_masks),
        "replay_iou": replay_iou,
        "early_flags": early["flags"],
        "late_flags": late["flags"],
        "dense_flags": flags_mod.join(f for f in (info["flags"], dense_run["flags"]) if f),
        **budget,
    }
