"""Lottery tickets: does the ticket's own initialisation matter?

Survey section 8.3; Frankle & Carbin (2019), Frankle et al. (2020).  Iterative magnitude
pruning (:class:`sparsity_lab.methods.lottery.IMP`) finds a mask; the *ticket* is that mask
on the weights of an early point of the same run: the initialisation ``theta_0`` or the
weights ``theta_k`` after ``k`` steps.  The ticket "wins" if it trains better than the same
mask with new random weights (re-initialisation) and than a random mask with the same
layer sparsities.  On small networks the original paper found winning tickets with
``theta_0``; on deeper ones only rewinding to ``theta_k`` worked.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..methods.lottery import IMP

#: Network labels of :func:`ticket_rounds`.
NETWORKS = ("ticket (rewind to θ0)", "ticket (rewind to θk)", "re-initialised", "random mask")


def ticket_rounds(
    t: Any,
    sparsity: float,
    *,
    rounds: int = 3,
    epochs: int = 5,
    lr: float = 0.05,
    rewind_step: int | None = None,
) -> pd.DataFrame:
    """IMP from the task's initialisation, rewinding to ``theta_0`` and to ``theta_k``.

    The ``theta_0`` run trains both baselines in every round (the ticket's mask
    re-initialised, and a random mask with its layer sparsities on ``theta_0``);
    ``rewind_step`` (``k``) defaults to one epoch of steps.  Returns a long table:
    ``round, sparsity, network, accuracy`` (validation accuracy at the end of each round;
    round 0 is the dense network).
    """
    train, val, _ = t.loaders()
    k = len(train) if rewind_step is None else rewind_step
    options = dict(epochs=epochs, lr=lr, lr_schedule="cosine", seed=t.seed, progress=False)
    init = IMP(sparsity, rounds=rounds, rewind="init", baselines=("reinit", "random_mask"))
    init.fit(t.build(), train, val, **options)
    step = IMP(sparsity, rounds=rounds, rewind="step", rewind_step=k)
    step.fit(t.build(), train, val, **options)
    columns = {
        NETWORKS[0]: (init.rounds_table, "val_accuracy"),
        NETWORKS[1]: (step.rounds_table, "val_accuracy"),
        NETWORKS[2]: (init.rounds_table, "reinit_val_accuracy"),
        NETWORKS[3]: (init.rounds_table, "random_mask_val_accuracy"),
    }
    rows = []
    for network, (table, column) in columns.items():
        for _, row in table.iterrows():
            if row["round"] == 0 and network in NETWORKS[1:]:
                continue  # the dense round is the same network for every arm
            label = "dense" if row["round"] == 0 else network
            rows.append(
                {
                    "round": int(row["round"]),
                    "sparsity": float(row["sparsity"]),
                    "network": label,
                    "accuracy": float(row[column]),
                }
            )
    return pd.DataFrame(rows)


def ticket_advantage(table: pd.DataFrame) -> pd.DataFrame:
    """Per round (and seed, if there is a ``seed`` column): each ticket's accuracy minus
    the better of the two baselines.  Positive means the ticket wins."""
    by = ["round", "seed"] if "seed" in table.columns else ["round"]
    wide = table[table["round"] > 0].pivot_table(index=by, columns="network", values="accuracy")
    best = wide[[NETWORKS[2], NETWORKS[3]]].max(axis=1)
    out = pd.DataFrame({"theta0_advantage": wide[NETWORKS[0]] - best})
    out["thetak_advantage"] = wide[NETWORKS[1]] - best
    return out.reset_index()
