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

from .. import masks
from ..ephemeral.heads import head_importance
from ..methods.base import independent_copy
from ..methods.lottery import EarlyBird
from ..patterns import check_sparsity
from ..pruning import prune
from ..train import Callback, Trainer, evaluate, fit

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

    def on_train_begin(self, trainer: Trainer) -> None:  # noqa: D102
        self.epochs: list[int] = []
        self.records: dict[str, list[MaskSet]] = {label: [] for label in self.selectors}
        if self.at_init:
            self._record(trainer.model, 0)

    def on_epoch_end(self, trainer: Trainer) -> None:  # noqa: D102
        self._record(trainer.model, trainer.epoch + 1)

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


def early_against_late(
    t: Any,
    sparsity: float,
    *,
    epochs: int = 10,
    finetune_epochs: int = 2,
    lr: float = 0.05,
    epsilon: float = 0.1,
    window: int = 3,
    selectors: Mapping[str, Selector] | None = None,
) -> dict[str, Any]:
    """Track masks during dense training, then prune early (early-bird) or at the end.

    ``t`` is a :class:`sparsity_lab.recipes.Task`.  Both arms train for
    ``epochs + finetune_epochs`` epochs in all:

    * *late*: dense for ``epochs`` (tracked by a :class:`MaskTracker`), one-shot global
      magnitude pruning, then ``finetune_epochs`` with the mask fixed;
    * *early*: :class:`~sparsity_lab.methods.lottery.EarlyBird` from the same
      initialisation, which draws its ticket when the masks settle (``epsilon``,
      ``window``, searching the first ``epochs`` epochs) and trains it for the rest.

    Returns ``{"table": tracker.table(), "stable_epoch", "early_epoch", "early_accuracy",
    "late_accuracy", "dense_accuracy", "early_late_iou"}`` (test accuracy; the IoU is
    between the early-bird ticket and the late mask).
    """
    train, val, test = t.loaders()
    selectors = selectors or {"magnitude": criterion_selector("magnitude", sparsity)}
    tracker = MaskTracker(selectors)
    dense = t.build()
    start = independent_copy(dense)
    fit(
        dense,
        train,
        val,
        epochs=epochs,
        lr=lr,
        lr_schedule="cosine",
        seed=t.seed,
        callbacks=[tracker],
        progress=False,
    )
    dense_accuracy = evaluate(dense, test)["accuracy"]
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
    prune(dense, "magnitude", sparsity)
    late_masks = {n: m.bool().clone() for n, m in masks.masks(dense).items()}
    if finetune_epochs:
        fit(dense, train, val, epochs=finetune_epochs, lr=lr / 5, seed=t.seed, progress=False)
    total = epochs + finetune_epochs
    bird = EarlyBird(sparsity, epsilon=epsilon, window=window, max_search=epochs / total)
    bird.fit(
        start, train, val, epochs=total, lr=lr, lr_schedule="cosine", seed=t.seed, progress=False
    )
    bird_masks = {n: m.bool() for n, m in masks.masks(start).items()}
    return {
        "table": table,
        "stable_epoch": stable,
        "early_epoch": None if bird.found_epoch is None else bird.found_epoch + 1,
        "early_accuracy": evaluate(start, test)["accuracy"],
        "late_accuracy": evaluate(dense, test)["accuracy"],
        "dense_accuracy": dense_accuracy,
        "early_late_iou": iou(bird_masks, late_masks),
    }
