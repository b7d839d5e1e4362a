"""One protocol to compare regularizers with each other and with training-time pruning.

:func:`run` trains a task's model from scratch with a method for ``epochs`` epochs, reaches
the target sparsity (a regularizer's projection, or the schedule of a training method such
as ``gmp``), fine-tunes ``finetune_epochs`` more with the masks fixed
(:func:`sparsity_lab.recipes.finetune`), and measures with
:func:`sparsity_lab.recipes.evaluate_run`, sanity flags included.  The notebooks on
regularisation (02d, 02j) and ``benchmarks/regularization.py`` share it, so their numbers come from
the same code.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from .. import patterns, registry
from ..pruning import sparsity as measured_sparsity
from ..recipes import Task, evaluate_run, finetune
from ..run_cache import cached_run
from ..targets import default_targets
from ..train import evaluate, fit
from .base import Regularizer

__all__ = ["run", "extra_parameters"]


class _Channel(patterns.Channel):
    """The channel pattern with a contiguous ``expand``.

    ``patterns.Channel.expand`` returns a broadcast view for 2-D weights, and
    :meth:`sparsity_lab.criteria.Criterion.prune` intersects it in place with the previous
    mask, which fails from the second pruning step of a schedule on; a copy avoids it.
    """

    def expand(self, keep_groups, shape):
        return super().expand(keep_groups, shape).contiguous()


def extra_parameters(reg: Regularizer) -> int:
    """Number of parameters the regularizer adds to the model while it trains."""
    return sum(p.numel() for p in reg.parameters())


def _library_call(arguments: dict[str, Any]) -> bool:
    """Whether a run is fixed by its arguments: on a model of its own, with a method of
    this library (one registered elsewhere has code the run cache's key cannot see)."""
    method = arguments["method"]
    if arguments["model"] is not None or not isinstance(method, str):
        return False
    if method == "dense":
        return True
    found = registry.entry(method)
    return getattr(found.obj, "__module__", "").startswith("sparsity_lab.")


@cached_run(accepts=_library_call)
def run(
    task: Task,
    method: str,
    sparsity: float,
    *,
    pattern: str = "unstructured",
    epochs: int = 8,
    finetune_epochs: int = 2,
    optimizer: str = "adam",
    lr: float = 1e-3,
    model: torch.nn.Module | None = None,
    finetune_lr: float | Sequence[float] | None = None,
    finetune_optimizer: str | None = None,
    targets: list[str] | None = None,
    batch_size: int | None = None,
    fit_options: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train ``task``'s model with ``method`` to ``sparsity``, fine-tune, and measure.

    ``method`` is a regularizer's name, a training method's name (``"gmp"``, ...), or
    ``"dense"`` (no pruning, the reference).  With ``pattern="channel"`` the last layer
    stays dense for every method, as the structured regularizers do by default.
    ``options`` go to the method's constructor.  Fine-tuning uses ``finetune_lr``
    (default: a third of ``lr``) and ``finetune_optimizer`` (default: ``optimizer``).
    ``model`` is the freshly built model to train in place (default: ``task.build()``),
    for callers that keep it; ``targets`` the pruned tensors (default: every Linear/Conv
    weight, less the last layer for a structured pattern); ``batch_size`` the training
    batch (default: the task's); ``fit_options`` more options of the training's
    :func:`sparsity_lab.train.fit` (momentum, weight decay).  A list of ``finetune_lr``
    fine-tunes a copy of the pruned model at each rate and keeps the one with the best
    validation accuracy (the first listed on a tie): a rate that suits one method's
    weights can diverge on another's.

    Returns ``reached`` (the regularizer's threshold rule; the target for other methods),
    ``measured_sparsity`` (over the pruned tensors), ``val_accuracy`` and ``test_accuracy``
    after fine-tuning, ``flags`` (the sanity flags of the final model on the test split,
    :func:`sparsity_lab.recipes.evaluate_run`: a layer pruned to 100%, a disconnected
    network, chance level, a class never predicted, and for unstructured runs a target
    not reached), ``finetune_epochs`` and ``finetune_flops`` (the fine-tuning budget),
    ``pruned_accuracy`` (validation, before fine-tuning), ``seconds``
    (the training with the method, fine-tuning excluded), ``epoch_seconds`` (each
    training epoch's wall time, validation included), ``seconds_per_epoch`` (the median
    of ``epoch_seconds`` after the first epoch, which pays for allocations and warm-up;
    the only epoch when there is one),
    ``extra_parameters``, ``strength`` (final), ``layer_sparsity`` (the threshold
    rule's per-layer sparsity, a dict) and ``finetune_lr`` (the rate the model was
    fine-tuned at).

    When :mod:`sparsity_lab.run_cache` reads, a run of a method of this library on a model
    of its own that has run before is read back from disk (its seconds are that run's).
    """
    rates = [lr / 3] if finetune_lr is None else finetune_lr
    rates = list(rates) if isinstance(rates, Sequence) else [float(rates)]
    if not rates:
        raise ValueError("finetune_lr is an empty list: give a rate, or rates to choose from")
    train, val, _ = task.loaders(batch_size)
    model = task.build() if model is None else model
    names = default_targets(model) if targets is None else list(targets)
    if targets is None and pattern != "unstructured" and len(names) > 1:
        names = names[:-1]
    fit_options = {
        **(fit_options or {}),
        "optimizer": optimizer,
        "lr": lr,
        "seed": task.seed,
        "progress": False,
    }
    out: dict[str, Any] = {"extra_parameters": 0, "strength": float("nan"), "layer_sparsity": {}}
    start = time.perf_counter()
    if method == "dense":
        history = fit(model, train, val, epochs=epochs, **fit_options)
        out["reached"] = 0.0
    elif registry.entry(method).kind == "regularizer":
        reg = registry.get(method, "regularizer")(
            sparsity=sparsity, pattern=pattern, targets=names, seed=task.seed, **options
        )
        reg.prepare(model)
        out["extra_parameters"] = extra_parameters(reg)
        history = reg.fit(model, train, val, epochs=epochs, **fit_options)
        out.update(reached=reg.reached, strength=reg.strength, layer_sparsity=reg.layer_sparsity)
    else:
        cls = registry.get(method, "training")
        pat = _Channel() if pattern == "channel" else pattern
        trainer = cls(sparsity, pattern=pat, targets=names, seed=task.seed, **options)
        history = trainer.fit(model, train, val, epochs=epochs, **fit_options)
        out["reached"] = sparsity
    seconds = time.perf_counter() - start
    epoch_seconds = [float(x) for x in history["seconds"]]
    steady = epoch_seconds[1:] or epoch_seconds
    pruned_accuracy = evaluate(model, val)["accuracy"]

    tuned = []  # (validation accuracy, rate, fine-tuned model, its budget)
    for rate in rates:
        trial = model if len(rates) == 1 else copy.deepcopy(model)
        spent = finetune(
            trial, task, finetune_epochs, lr=rate, optimizer=finetune_optimizer or optimizer,
            progress=False,
        )  # fmt: skip
        score = evaluate(trial, val)["accuracy"] if len(rates) > 1 else 0.0
        tuned.append((score, rate, trial, spent))
    _, chosen_lr, best, budget = max(tuned, key=lambda x: x[0])  # max keeps the first tie
    if best is not model:  # the caller's model holds the result
        model.load_state_dict(best.state_dict())
    with torch.no_grad():
        final = measured_sparsity(model, names)
    # a channel target counts units, not weights: only an unstructured target is checked
    target = sparsity if pattern == "unstructured" and method != "dense" else None
    checked = evaluate_run(model, task, target_sparsity=target, names=names)
    return {
        **out,
        "measured_sparsity": final,
        "pruned_accuracy": pruned_accuracy,
        "val_accuracy": evaluate(model, val)["accuracy"],
        "test_accuracy": checked["accuracy"],
        "flags": checked["flags"],
        **budget,
        "finetune_lr": chosen_lr,
        "seconds": seconds,
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": float(statistics.median(steady)),
    }
