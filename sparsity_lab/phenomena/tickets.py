"""Lottery tickets: does the ticket's own initialisation matter?

Survey section 8.3; Frankle & Carbin (2019), Frankle et al. (2020).  Iterative magnitude
pruning finds a mask; the *ticket* is that mask on the weights of an early point of the
same run: the initialisation ``theta_0`` or the weights ``theta_k`` after ``k`` steps.
The ticket "wins" if it trains better than the same mask with new random weights
(re-initialisation) and than a random mask with the same layer counts.  On small networks
the original paper found winning tickets with ``theta_0``; on deeper ones only rewinding
to ``theta_k`` worked.

Everything follows the shared protocol: round 0 is the recipe's dense model
(:func:`sparsity_lab.recipes.dense`); every round trains with the setting's recipe; the
networks that start from an initialisation (the ``theta_0`` ticket, the re-initialised
one, the random mask) start through :func:`sparsity_lab.recipes.sparse_start`, so that
none of them fails only because its signal fades; the random mask is
:func:`sparsity_lab.recipes.random_like` of the ticket's mask.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from .. import flags as flags_mod
from .. import masks, recipes
from ..pruning import prune
from ..run_cache import cached_run
from ..schedules import iterative
from ..train import Callback, Trainer
from .structure import fit_recipe

#: Network labels of :func:`ticket_rounds`.
NETWORKS = ("ticket (rewind to θ0)", "ticket (rewind to θk)", "re-initialised", "random mask")


class _WeightsAt(Callback):
    """Keeps the weights after optimizer step ``step`` and stops training there."""

    def __init__(self, step: int) -> None:
        self.step, self.state = step, None

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.step == 0:
            self.state = copy.deepcopy(trainer.model.state_dict())
            trainer.stop = True

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step == self.step:
            self.state = copy.deepcopy(trainer.model.state_dict())
            trainer.stop = True


def weights_at_step(t: Any, step: int, recipe: recipes.Recipe) -> dict[str, torch.Tensor]:
    """The dense weights ``theta_k`` after ``step`` optimizer steps of the recipe's run.

    The run is replayed from the task's initialisation with the same recipe and batch
    order as the dense model, so its first ``step`` steps are those of the dense training.
    """
    saver = _WeightsAt(step)
    fit_recipe(t.build(), t, callbacks=[saver], recipe=recipe)
    if saver.state is None:
        raise ValueError(f"rewind_step={step} is beyond the steps of the recipe's run")
    return saver.state


def _found(model: torch.nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude masks of a (trained) model at ``sparsity``, the model untouched."""
    pruned = prune(copy.deepcopy(model), "magnitude", sparsity)
    return {n: m.detach().bool().clone() for n, m in masks.masks(pruned).items()}


def _run(
    model: torch.nn.Module, t: Any, sparsity: float, epochs: int | None, recipe: recipes.Recipe
) -> dict[str, Any]:
    fit_recipe(model, t, epochs=epochs, recipe=recipe)
    test = recipes.evaluate_run(model, t, target_sparsity=sparsity)
    return {
        "val_accuracy": recipes.evaluate_run(model, t, split="val")["accuracy"],
        "test_accuracy": test["accuracy"],
        "flags": test["flags"],
    }


@cached_run()
def ticket_rounds(
    t: Any,
    sparsity: float,
    *,
    rounds: int = 3,
    epochs: int | None = None,
    dense_epochs: int | None = None,
    rewind_step: int | None = None,
    networks: Sequence[str] = NETWORKS,
    baselines: str = "every",
) -> pd.DataFrame:
    """Iterative magnitude pruning from the recipe's dense model, rewinding to ``theta_0``
    and to ``theta_k``, with both baselines (by default in every round).

    Round 0 is :func:`sparsity_lab.recipes.dense` (``dense_epochs`` overrides the recipe's
    epochs, a smoke run).  Round ``r`` prunes the previous round's trained network by
    global magnitude to ``1 - (1 - sparsity)^(r / rounds)``, rewinds and trains it with
    the recipe for ``epochs`` (default: the recipe's).  The ``theta_0`` line also trains,
    in every round, its mask on fresh random weights (re-initialised) and a random mask
    with its layer counts on ``theta_0``; those three start through
    :func:`~sparsity_lab.recipes.sparse_start`.  ``rewind_step`` (``k``) defaults to one
    epoch of steps; the ``theta_k`` ticket starts from those weights as they are.

    ``networks`` (some of :data:`NETWORKS`) are the ones trained and reported; the
    ``theta_0`` line also trains, unreported, when only a baseline asks for its mask.
    ``baselines="last"`` trains the two baselines in the last round only, for an experiment
    that compares the networks where the rounds end.  Each network's
    initialisation and batch order come from the task's seed alone, so leaving some out
    leaves the others' results unchanged.

    Returns a long table: ``round, sparsity, network, val_accuracy, test_accuracy,
    flags`` (round 0 is the network ``"dense"``).  When :mod:`sparsity_lab.run_cache` reads,
    a table that was computed before is read back from disk.
    """
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown or not networks:
        raise ValueError(f"networks must be some of {NETWORKS}, got {tuple(networks)}")
    if baselines not in ("every", "last"):
        raise ValueError(f"baselines must be 'every' or 'last', got {baselines!r}")
    wanted = set(networks)
    lines = [n for n in NETWORKS[:2] if n in wanted]  # the two IMP lines that train
    if wanted & set(NETWORKS[2:]) and NETWORKS[0] not in lines:
        lines.insert(0, NETWORKS[0])  # the baselines take the theta_0 line's mask
    _, dense, info = recipes.dense(
        t.model_name, t.data_name, t.seed, epochs=dense_epochs, **t.options
    )
    recipe = info["recipe"]
    if NETWORKS[1] in lines:
        k = len(t.loaders(recipe.batch_size)[0]) if rewind_step is None else rewind_step
        theta_k = weights_at_step(t, k, recipe)
    dense_test = recipes.evaluate_run(dense, t)
    rows = [
        {
            "round": 0,
            "sparsity": 0.0,
            "network": "dense",
            "val_accuracy": info["val_accuracy"],
            "test_accuracy": dense_test["accuracy"],
            "flags": flags_mod.join(f for f in (info["flags"], dense_test["flags"]) if f),
        }
    ]
    trained = {NETWORKS[0]: dense, NETWORKS[1]: dense}
    for r in range(1, rounds + 1):
        s = iterative(r - 1, sparsity, 0, rounds, frequency=1)
        arms = {}
        for network in lines:
            found = _found(trained[network], s)
            if network == NETWORKS[0]:
                model = recipes.sparse_start(t.build(), found)
                theta0_mask = found
            else:
                model = t.build()
                model.load_state_dict(theta_k)
                for name, keep in found.items():
                    masks.attach(model, name, keep)
            arms[network] = model
        if baselines == "every" or r == rounds:
            other = dataclasses.replace(t, seed=t.seed + 1000 * r + 1)  # only for fresh weights
            if NETWORKS[2] in wanted:
                arms[NETWORKS[2]] = recipes.sparse_start(other.build(), theta0_mask)
            if NETWORKS[3] in wanted:
                arms[NETWORKS[3]] = recipes.sparse_start(
                    t.build(), recipes.random_like(theta0_mask, seed=t.seed + 1000 * r)
                )
        for network, model in arms.items():
            result = _run(model, t, s, epochs, recipe)
            trained[network] = model
            if network in wanted:
                rows.append({"round": r, "sparsity": s, "network": network} | result)
    return pd.DataFrame(rows)


def ticket_advantage(table: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """Per round (and seed, if there is a ``seed`` column): each ticket's ``metric`` minus
    the better of the two baselines.  Positive means the ticket wins."""
    by = ["round", "seed"] if "seed" in table.columns else ["round"]
    wide = table[table["round"] > 0].pivot_table(index=by, columns="network", values=metric)
    best = wide[[NETWORKS[2], NETWORKS[3]]].max(axis=1)
    out = pd.DataFrame({"theta0_advantage": wide[NETWORKS[0]] - best})
    out["thetak_advantage"] = wide[NETWORKS[1]] - best
    return out.reset_index()
