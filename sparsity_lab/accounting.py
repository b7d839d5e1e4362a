"""Accounting: what a pruned model holds and computes, per layer and in total.

FLOPs count the multiply-adds of each layer's weight as 2 operations per example: a dense
layer does ``2 * weight.numel() * positions`` and a masked one ``2 * nonzeros * positions``,
where ``positions`` is the number of places the weight is applied (1 for a Linear on a
vector, the output length or area for a Conv).  A bias, when reported, counts one add per
element and position.  Activations and attention's score products are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from . import masks
from .pruning import default_targets

COLUMNS = ["name", "shape", "parameters", "nonzeros", "sparsity", "dense_flops", "sparse_flops"]


def make_example_input(model: nn.Module) -> torch.Tensor:
    """A one-example zero input from ``model.input_shape`` (token ids if it embeds tokens)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            "cannot infer an input for FLOPs: pass example_input=... or give the model an "
            "`input_shape` attribute (the bundled models have one)"
        )
    embeds = any(isinstance(m, nn.Embedding) for m in model.modules())
    return torch.zeros(1, *shape, dtype=torch.long if embeds else torch.float32)


def positions(model: nn.Module, x: torch.Tensor, names: Iterable[str]) -> dict[str, int]:
    """For each tensor name, how many times per example its layer applies the tensor."""
    found: dict[str, int] = {}
    handles = []
    wanted: dict[str, list[str]] = {}
    for n in names:
        wanted.setdefault(n.rpartition(".")[0], []).append(n)
    for path, module in model.named_modules():
        if path in wanted:

            def hook(mod, inp, out, tensor_names=tuple(wanted[path])):
                conv = isinstance(mod, nn.modules.conv._ConvNd)
                channels = out.shape[1] if conv else out.shape[-1]
                for name in tensor_names:
                    found[name] = out.numel() // (out.shape[0] * channels)

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def _flops(numel: int, ndim: int, positions: int | None) -> float:
    # A weight does a multiply and an add per element and position; a bias only an add.
    if positions is None:
        return float("nan")
    return (2 if ndim > 1 else 1) * numel * positions


def report(
    model: nn.Module,
    names: Iterable[str] | None = None,
    example_input: torch.Tensor | None = None,
) -> pd.DataFrame:
    """One row per pruned tensor, plus a ``total`` row.

    Columns: name, shape, parameters, nonzeros, sparsity, dense_flops, sparse_flops (per
    example; NaN where no input could be built).  ``names`` defaults to every Linear/Conv
    weight and every masked tensor.
    """
    if names is None:
        names = list(dict.fromkeys(default_targets(model) + list(masks.masks(model))))
    names = list(names)
    x = example_input
    if x is None and hasattr(model, "input_shape"):
        x = make_example_input(model)
    if x is not None and x.shape[0] != 1:
        x = x[:1]
    pos = positions(model, x, names) if x is not None else {}
    rows = []
    for n in names:
        w = masks.weight(model, n).detach()
        nnz = int(w.count_nonzero())
        p = pos.get(n)
        rows.append(
            {
                "name": n,
                "shape": tuple(w.shape),
                "parameters": w.numel(),
                "nonzeros": nnz,
                "sparsity": 1 - nnz / w.numel(),
                "dense_flops": _flops(w.numel(), w.dim(), p),
                "sparse_flops": _flops(nnz, w.dim(), p),
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    total = {
        "name": "total",
        "shape": None,
        "parameters": int(df["parameters"].sum()),
        "nonzeros": int(df["nonzeros"].sum()),
        "dense_flops": df["dense_flops"].sum(min_count=len(df)),
        "sparse_flops": df["sparse_flops"].sum(min_count=len(df)),
    }
    total["sparsity"] = 1 - total["nonzeros"] / max(1, total["parameters"])
    return pd.concat([df, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
