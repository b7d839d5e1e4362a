"""Recipes: the standard experiment, train dense -> prune -> fine-tune -> evaluate.

The CLI and the notebooks share these so their numbers come from the same code.  Dense
checkpoints are cached on disk by everything that determines them, saved as plain state
dicts and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from . import data as data_mod
from . import models as models_mod
from .pruning import prune
from .pruning import sparsity as measured_sparsity
from .train import evaluate, fit

#: Models that take images as (C, H, W) rather than flat vectors.
IMAGE_MODELS = {"lenet5", "resnet_small"}
#: Models that take token ids and the data sets that provide them.
TOKEN_MODELS = {"tiny_transformer"}
TOKEN_DATA = {"text"}


@dataclass
class Task:
    """A model name on a data set, with the data split by ``seed``."""

    model_name: str
    data_name: str
    bundle: data_mod.DataBundle
    seed: int = 0
    batch_size: int = 128

    def build(self, **options: Any) -> nn.Module:
        """A freshly initialised model for this data, seeded by the task's seed."""
        torch.manual_seed(self.seed)
        if self.model_name in TOKEN_MODELS:
            options.setdefault("vocab_size", len(self.bundle.vocab or []))
        return models_mod.build(
            self.model_name,
            input_shape=self.bundle.input_shape,
            n_classes=self.bundle.n_classes,
            **options,
        )

    def loaders(self):
        """Train, validation and test loaders; the train order follows the seed."""
        return self.bundle.loaders(self.batch_size, seed=self.seed)


def task(model_name: str, data_name: str, *, seed: int = 0, **data_options: Any) -> Task:
    """Load ``data_name`` in the layout ``model_name`` expects and check they fit together."""
    if model_name not in models_mod.available():
        models_mod.build(model_name, input_shape=(1,), n_classes=2)  # raises with suggestions
    if (model_name in TOKEN_MODELS) != (data_name in TOKEN_DATA):
        raise ValueError(
            f"model {model_name!r} cannot read data {data_name!r}: token models "
            f"({', '.join(sorted(TOKEN_MODELS))}) need token data ({', '.join(sorted(TOKEN_DATA))})"
        )
    if data_name in {"mnist", "digits"}:
        data_options.setdefault("flatten", model_name not in IMAGE_MODELS)
    elif model_name in IMAGE_MODELS:
        raise ValueError(
            f"model {model_name!r} needs images; use data 'mnist' or 'digits', not {data_name!r}"
        )
    bundle = data_mod.load(data_name, seed=seed, **data_options)
    return Task(model_name, data_name, bundle, seed)


def _fingerprint(dataset: TensorDataset) -> str:
    """A short hash of a split's tensors (shapes, dtypes and values)."""
    h = hashlib.sha256()
    for tensor in dataset.tensors:
        h.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy())
    return h.hexdigest()[:16]


def _code_digest() -> str:
    """Hash of the sources that determine a dense checkpoint: models, training, this file."""
    h = hashlib.sha256()
    for name in ("models.py", "train.py", "recipes.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$SPARSITY_LAB_CACHE`` or ``~/.cache/sparsity-lab``."""
    return Path(os.environ.get("SPARSITY_LAB_CACHE", Path.home() / ".cache" / "sparsity-lab"))


def train_dense(
    t: Task,
    *,
    epochs: int = 10,
    lr: float = 0.05,
    optimizer: str = "sgd",
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the task's dense model, or load it from the checkpoint cache.

    Returns the model and ``{"val_accuracy", "test_accuracy", "cached"}``.  ``cache_dir=None``
    uses :func:`default_cache_dir`; pass ``False`` to never cache.
    """
    key = {
        "model": t.model_name,
        "data": t.data_name,
        "seed": t.seed,
        "epochs": epochs,
        "lr": lr,
        "optimizer": optimizer,
        "batch_size": t.batch_size,
        "input_shape": list(t.bundle.input_shape),
        "n_classes": t.bundle.n_classes,
        # data options (a teacher's width, a subset's size) change the examples without
        # changing any name above, so the key also covers the training examples themselves
        "train_data": _fingerprint(t.bundle.train),
        # a change to how models are built or trained must not load a stale checkpoint
        "code": _code_digest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    model = t.build()
    path = None
    if cache_dir is not False:
        path = Path(cache_dir or default_cache_dir()) / f"{t.model_name}-{t.data_name}-{digest}.pt"
    cached = False
    if path is not None and path.exists():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            cached = True
        except Exception as err:  # a partial or stale file: retrain rather than fail
            warnings.warn(f"ignoring unreadable checkpoint {path}: {err}", stacklevel=2)
    train, val, test = t.loaders()
    if not cached:
        fit(
            model,
            train,
            val,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            seed=t.seed,
            progress=progress,
            lr_schedule="cosine",
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)  # never leave a half-written checkpoint behind
    return model, {
        "val_accuracy": evaluate(model, val)["accuracy"],
        "test_accuracy": evaluate(model, test)["accuracy"],
        "cached": cached,
    }


def prune_and_finetune(
    model: nn.Module,
    t: Task,
    method: str,
    sparsity: float | None,
    *,
    finetune_epochs: int = 2,
    lr: float = 0.01,
    optimizer: str = "sgd",
    progress: bool | None = None,
    **prune_options: Any,
) -> dict[str, float]:
    """Prune ``model`` in place, fine-tune it with masks fixed, and measure each stage.

    Returns ``{"measured_sparsity", "pruned_accuracy", "val_accuracy", "test_accuracy"}``:
    accuracy on the validation split right after pruning, then after fine-tuning.
    """
    train, val, test = t.loaders()
    if "data" not in prune_options:
        prune_options["data"] = train
    prune(model, method, sparsity, seed=t.seed, **prune_options)
    pruned = evaluate(model, val)["accuracy"]
    if finetune_epochs > 0:
        fit(
            model,
            train,
            val,
            epochs=finetune_epochs,
            lr=lr,
            optimizer=optimizer,
            seed=t.seed,
            progress=progress,
        )
    return {
        "measured_sparsity": measured_sparsity(model),
        "pruned_accuracy": pruned,
        "val_accuracy": evaluate(model, val)["accuracy"],
        "test_accuracy": evaluate(model, test)["accuracy"],
    }
