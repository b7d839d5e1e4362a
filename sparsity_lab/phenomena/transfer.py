"""Transfer of sparse models: linear probing and full fine-tuning from a sparse upstream.

After "How well do sparse ImageNet models transfer?" (Iofinova et al. 2022), which finds
that sparse upstream models can match or beat the dense one downstream, with large
differences between pruning methods and between the two ways of transferring:

* **linear probing**: the upstream features are frozen and only a new head is trained;
* **full fine-tuning**: every weight trains on the downstream task, the upstream mask
  fixed (sparse transfer).

Small stand-ins for upstream/downstream pairs: the MNIST subset to scikit-learn's digits
(upsampled to 28x28, :func:`resized`), and MNIST-1D to a regenerated MNIST-1D with other
templates (time-reversed) and more noise (:func:`mnist1d_variant`).

Upstream and downstream training both follow the upstream setting's recipe
(:data:`sparsity_lab.recipes.RECIPES`: optimizer, learning rate, schedule, batch size),
so a sparse method gets the optimiser and budget the dense baseline was tuned with.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from .. import masks, recipes, registry
from ..data import DataBundle
from ..methods.base import independent_copy
from ..methods.lottery import IMP
from ..targets import default_targets
from ..train import fit

#: Upstream training methods compared (besides ``"dense"``).
UPSTREAM = ("gmp", "acdc", "rigl", "imp", "l1")
MODES = ("linear", "full")


# --- downstream data -----------------------------------------------------------------------


def resized(bundle: DataBundle, side: int, *, flatten: bool = True) -> DataBundle:
    """Square images of ``bundle`` resampled to ``side x side`` (bilinear), so that a model
    built for one image size reads another data set."""
    if len(bundle.input_shape) == 3:
        channels, h, w = bundle.input_shape
    else:
        channels, h = 1, math.isqrt(math.prod(bundle.input_shape))
        w = h
    if channels * h * w != math.prod(bundle.input_shape):
        raise ValueError(f"resized needs square images, got input shape {bundle.input_shape}")

    def convert(split: TensorDataset) -> TensorDataset:
        x, y = split.tensors
        images = x.reshape(len(x), channels, h, w)
        big = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        return TensorDataset(big.flatten(1) if flatten else big, y)

    shape = (channels * side * side,) if flatten else (channels, side, side)
    return DataBundle(
        f"{bundle.name}-{side}px",
        convert(bundle.train),
        convert(bundle.val),
        convert(bundle.test),
        n_classes=bundle.n_classes,
        input_shape=shape,
    )


def mnist1d_variant(
    *, seed: int = 0, num_samples: int = 2000, noise_factor: float = 2.0, n_val: int = 200
) -> DataBundle:
    """MNIST-1D regenerated with time-reversed templates and ``noise_factor`` times the
    correlated and i.i.d. noise: the same kind of signal, a different task.

    Generated in memory (nothing is downloaded); the generator seeds Python's and NumPy's
    global RNGs, so their state is restored afterwards.
    """
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = num_samples, 1000 + seed
    args.corr_noise_scale *= noise_factor
    args.iid_noise_scale *= noise_factor
    templates = mnist1d.data.get_templates()
    templates["x"] = templates["x"][:, ::-1].copy()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        made = mnist1d.data.make_dataset(args, template=templates)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x, y = np.asarray(made["x"], dtype=np.float32), np.asarray(made["y"], dtype=np.int64)
    tr, va = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed)

    def split(xs, ys) -> TensorDataset:
        return TensorDataset(torch.from_numpy(xs).reshape(len(xs), 1, -1), torch.from_numpy(ys))

    test_x = np.asarray(made["x_test"], dtype=np.float32)
    test_y = np.asarray(made["y_test"], dtype=np.int64)
    return DataBundle(
        "mnist1d-variant",
        split(x[tr], y[tr]),
        split(x[va], y[va]),
        split(test_x, test_y),
        n_classes=10,
        input_shape=(1, x.shape[1]),
    )


# --- upstream ---------------------------------------------------------------------------------


def pretrain(t: Any, method: str, sparsity: float, *, epochs: int | None = None) -> nn.Module:
    """The task's model trained upstream by ``method`` (``"dense"`` or one of
    :data:`UPSTREAM`) to ``sparsity``, with the setting's recipe
    (:func:`sparsity_lab.recipes.recipe_for`: optimizer, lr, schedule, batch size).

    ``epochs`` overrides the recipe's (a smoke run); every method gets the same number.
    ``"dense"`` is :func:`sparsity_lab.recipes.train_dense` (cached on disk); IMP trains
    densely, then prunes in 2 rounds with rewinding to one epoch, ``epochs // 3`` epochs
    each; the regulariser (``l1``)
    tunes its strength to the target and may stop short of it: measure the sparsity
    reached (:func:`sparsity_lab.recipes.evaluate_run`).
    """
    recipe = recipes.recipe_for(t.model_name, t.data_name)
    epochs = recipe.epochs if epochs is None else epochs
    if method == "dense":
        return recipes.train_dense(t, epochs=epochs, progress=False)[0]
    train, val, _ = t.loaders(recipe.batch_size)
    model = t.build()
    options = {**recipe.training(), "seed": t.seed, "progress": False}
    options.pop("epochs")
    if method == "imp":
        # a dense training and two pruning rounds share the budget
        IMP(sparsity, rounds=2, rewind="step", rewind_step=len(train)).fit(
            model, train, val, epochs=max(1, epochs // 3), **options
        )
    elif method == "l1":
        registry.get("l1", "regularizer")(sparsity=sparsity).fit(
            model, train, val, epochs=epochs, **options
        )
    elif method in ("gmp", "acdc", "rigl"):
        kwargs = {"budget": "global"} if method != "rigl" else {"budget": "erk"}
        # the task's seed also draws the method's random choices (RigL's initial mask)
        registry.get(method, "training")(sparsity, seed=t.seed, **kwargs).fit(
            model, train, val, epochs=epochs, **options
        )
    else:
        raise ValueError(f"unknown upstream method {method!r}; choose dense or {UPSTREAM}")
    for n, m in masks.masks(model).items():
        masks.attach(model, n, m.clone())  # plain masks: no straight-through gradient left
    return model


# --- downstream ------------------------------------------------------------------------------


def replace_head(model: nn.Module, n_classes: int, seed: int = 0) -> str:
    """Swap the model's last Linear layer for a fresh, dense one with ``n_classes`` outputs;
    returns its module path."""
    last = default_targets(model)[-1].rpartition(".")[0]
    old = model.get_submodule(last)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"the last prunable layer {last!r} is not a Linear head")
    parent, _, attr = last.rpartition(".")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(old.in_features, n_classes)
    setattr(model.get_submodule(parent) if parent else model, attr, head)
    return last


def transfer_run(
    upstream: nn.Module,
    bundle: DataBundle,
    mode: str,
    *,
    epochs: int = 5,
    recipe: recipes.Recipe | None = None,
    lr: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a copy of ``upstream`` with a new head on ``bundle``; its test accuracy and
    sanity flags (:func:`sparsity_lab.recipes.evaluate_run`), ``{"accuracy", "flags"}``.

    ``mode="linear"``: only the head trains; ``"full"``: everything trains, with the
    upstream masks kept fixed.  Training follows ``recipe`` (the upstream setting's,
    default :data:`sparsity_lab.recipes.DEFAULT_RECIPE`) for ``epochs`` epochs; ``lr``
    overrides its learning rate.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    recipe = recipe or recipes.DEFAULT_RECIPE
    model = independent_copy(upstream)
    head = replace_head(model, bundle.n_classes, seed)
    if mode == "linear":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(f"{head}."))
    down = recipes.Task("downstream", bundle.name, bundle, seed, batch_size=recipe.batch_size)
    train, val, _ = down.loaders()
    options = {**recipe.training(), "epochs": epochs, "lr": recipe.lr if lr is None else lr}
    fit(model, train, val, seed=seed, progress=False, **options)
    run = recipes.evaluate_run(model, down)
    return {"accuracy": run["accuracy"], "flags": run["flags"]}


def transfer(
    upstream: nn.Module,
    bundle: DataBundle,
    mode: str,
    *,
    epochs: int = 5,
    recipe: recipes.Recipe | None = None,
    lr: float | None = None,
    seed: int = 0,
) -> float:
    """Downstream test accuracy of :func:`transfer_run`."""
    return transfer_run(upstream, bundle, mode, epochs=epochs, recipe=recipe, lr=lr, seed=seed)[
        "accuracy"
    ]
