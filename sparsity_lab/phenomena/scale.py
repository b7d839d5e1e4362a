"""Large-sparse against small-dense at the same cost.

Survey section 2.1 and Zhu & Gupta (2017): for the same number of nonzero weights, a
large network pruned gradually is more accurate than a small dense one trained from
scratch.  The comparison depends on what "the same cost" means: for a multilayer
perceptron the FLOPs of each layer are proportional to its nonzeros, but in a
convolutional network a weight is used once per output position, so equal nonzeros and
equal FLOPs give two different small dense networks.  :func:`matching_model` finds the
width of each.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import recipes
from ..accounting import report
from ..methods.gradual import GMP
from .structure import fit_recipe

#: How each model's width is scaled by a factor ``f``.
WIDTH_OPTIONS = {
    "lenet300": lambda f: {"hidden": (max(1, round(300 * f)), max(1, round(100 * f)))},
    "cnn1d": lambda f: {"channels": tuple(max(1, round(32 * f)) for _ in range(3))},
    "resmlp": lambda f: {"width": max(1, round(64 * f))},
}
MEASURES = {"nonzeros": "nonzeros", "flops": "sparse_flops"}


def realised_width(model_name: str, f: float) -> float:
    """The width a factor ``f`` builds: the first layer's units over the full model's.

    Widths are whole numbers of units, so ``f`` itself (a bisection's end point) can sit up
    to half a unit away from what is built: 12 of 32 channels is 0.375 whatever ``f``
    rounded to it.
    """
    built, full = WIDTH_OPTIONS[model_name](f), WIDTH_OPTIONS[model_name](1.0)

    def first(options: dict) -> int:
        value = next(iter(options.values()))
        return value[0] if isinstance(value, tuple) else value

    return first(built) / first(full)


def cost(model: nn.Module, measure: str) -> float:
    """Nonzero weights or forward FLOPs per example of the Linear/Conv weights."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    return float(report(model).iloc[-1][MEASURES[measure]])


def matching_model(
    t: Any, target: float, measure: str, *, steps: int = 30
) -> tuple[float, nn.Module]:
    """The width factor ``f <= 1`` whose dense model costs nearest to ``target``.

    Bisection on ``f`` (cost grows with width) to the last step on either side of the
    target, then the nearer of the two; returns ``(f, model)`` with the model
    built by ``t`` (same seed) at that width.
    """
    if t.model_name not in WIDTH_OPTIONS:
        raise ValueError(
            f"no width rule for model {t.model_name!r}; known: {', '.join(WIDTH_OPTIONS)}"
        )
    widths = WIDTH_OPTIONS[t.model_name]
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if cost(t.build(**widths(mid)), measure) <= target:
            lo = mid
        else:
            hi = mid
    # the widths are whole numbers: of the last two candidates, take the nearer in cost
    below, above = t.build(**widths(max(lo, 1e-6))), t.build(**widths(hi))
    if abs(cost(above, measure) - target) < abs(cost(below, measure) - target):
        return hi, above
    return lo, below


def large_sparse_vs_small_dense(
    t: Any, sparsity: float, *, epochs: int | None = None
) -> list[dict[str, Any]]:
    """Train the large model with GMP to ``sparsity`` (uniform budget, as Zhu & Gupta) and
    two small dense models matched to its nonzeros and to its FLOPs.

    All three train with the setting's recipe (:func:`~sparsity_lab.phenomena.structure.
    fit_recipe`: its optimizer, learning rate, schedule, batch size and batch order) for
    ``epochs`` (default: the recipe's); GMP prunes from the start to 75% of training.
    Returns one row per model: ``model, width`` (the realised width, see
    :func:`realised_width`), ``nonzeros, flops, val_accuracy, test_accuracy, flags``.
    """
    recipe = recipes.recipe_for(t.model_name, t.data_name)
    train = t.loaders(recipe.batch_size)[0]
    large = t.build()
    gmp = GMP(sparsity, budget="uniform", end=0.75, frequency=max(1, len(train) // 2))
    fit_recipe(large, t, epochs=epochs, callbacks=[gmp], recipe=recipe)
    rows = [("large sparse", 1.0, large, sparsity)]
    for measure in MEASURES:
        f, small = matching_model(t, cost(large, measure), measure)
        fit_recipe(small, t, epochs=epochs, recipe=recipe)
        width = realised_width(t.model_name, f)
        rows.append((f"small dense (equal {measure})", width, small, None))
    out = []
    for label, f, m, target in rows:
        test = recipes.evaluate_run(m, t, target_sparsity=target)
        out.append(
            {
                "model": label,
                "width": f,
                "nonzeros": cost(m, "nonzeros"),
                "flops": cost(m, "flops"),
                "val_accuracy": recipes.evaluate_run(m, t, split="val")["accuracy"],
                "test_accuracy": test["accuracy"],
                "flags": test["flags"],
            }
        )
    return out
