"""Recipes and the one experimental protocol: train dense -> prune -> fine-tune -> evaluate.

Every notebook, benchmark and the CLI take their numbers from these functions, so that a
result in one chapter can be compared with a result in another:

- :data:`RECIPES`: each bundled (model, data) setting's dense training recipe, chosen on
  validation data, with the test accuracy it is documented to reach and its source.
  :func:`train_dense` trains with it (or loads the cached checkpoint).
- :func:`sparse_start`: a sparse network from initialisation, always with each unit's kept
  weights rescaled to its sparse fan-in.
- :func:`random_like`: the random baseline of a mask, with the same per-layer counts.
- :func:`finetune`: fine-tuning with the masks fixed, its budget stated in epochs and FLOPs.
- :func:`evaluate_run`: accuracy (and perplexity for token prediction), the reached
  sparsity and the sanity flags of :mod:`sparsity_lab.flags`, in one dict per run.

Dense checkpoints are cached on disk by everything that determines them, saved as plain
state dicts with a digest of their contents and read back with
``torch.load(weights_only=True)``; a damaged or non-finite checkpoint is reported and
retrained from a fresh model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from . import data as data_mod
from . import flags as flags_mod
from . import masks
from . import models as models_mod
from .accounting import report
from .callbacks import Callback
from .criteria.at_init import rescale_fan_in, shuffle_masks
from .criteria.first_order import KarninScores, MovementScores, ScoreTracker
from .modes import evaluating
from .paths import default_cache_dir, exclusive, write_atomically
from .pruning import prune
from .pruning import sparsity as measured_sparsity
from .targets import default_targets
from .train import evaluate, fit

#: Models that take images as (C, H, W) rather than flat vectors.
IMAGE_MODELS = {"lenet5", "resnet_small"}
#: Models that take token ids and the data sets that provide them.
TOKEN_MODELS = {"tiny_transformer"}
TOKEN_DATA = {"text", "chars", "char_lm"}
#: Token data sets whose label is the next token: their runs also report perplexity.
NEXT_TOKEN_DATA = {"chars", "char_lm"}


@dataclass
class Task:
    """A model name on a data set, with the data split by ``seed``.

    ``options`` are the data options the bundle was loaded with (a subset's size, ...): a
    recipe's expected accuracy holds only for the default data.
    """

    model_name: str
    data_name: str
    bundle: data_mod.DataBundle
    seed: int = 0
    batch_size: int = 128
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, **options: Any) -> nn.Module:
        """A freshly initialised model for this data, seeded by the task's seed."""
        torch.manual_seed(self.seed)
        if self.model_name in TOKEN_MODELS:
            options.setdefault("vocab_size", len(self.bundle.vocab or []))
        recipe_options = recipe_for(self.model_name, self.data_name).model_options
        return models_mod.build(
            self.model_name,
            input_shape=self.bundle.input_shape,
            n_classes=self.bundle.n_classes,
            **{**recipe_options, **options},
        )

    def loaders(self, batch_size: int | None = None):
        """Train, validation and test loaders; the train order follows the seed."""
        return self.bundle.loaders(batch_size or self.batch_size, seed=self.seed)

    @property
    def default_data(self) -> bool:
        """True when the data were loaded with their default options (the recipe's)."""
        return not self.options


def task(model_name: str, data_name: str, *, seed: int = 0, **data_options: Any) -> Task:
    """Load ``data_name`` in the layout ``model_name`` expects and check they fit together."""
    if model_name not in models_mod.available():
        models_mod.build(model_name, input_shape=(1,), n_classes=2)  # raises with suggestions
    if (model_name in TOKEN_MODELS) != (data_name in TOKEN_DATA):
        raise ValueError(
            f"model {model_name!r} cannot read data {data_name!r}: token models "
            f"({', '.join(sorted(TOKEN_MODELS))}) need token data ({', '.join(sorted(TOKEN_DATA))})"
        )
    given = dict(data_options)
    if data_name in {"mnist", "digits"}:
        data_options.setdefault("flatten", model_name not in IMAGE_MODELS)
        given.pop("flatten", None)  # the layout is not a change of data
    elif model_name in IMAGE_MODELS:
        raise ValueError(
            f"model {model_name!r} needs images; use data 'mnist' or 'digits', not {data_name!r}"
        )
    bundle = data_mod.load(data_name, seed=seed, **data_options)
    return Task(model_name, data_name, bundle, seed, options=given)


# --------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How a (model, data) setting's dense model is trained, and what it should reach.

    ``expected_test_accuracy`` is the mean test accuracy over seeds 0-2 measured with this
    recipe on the default data (``benchmarks/dense_recipes.py`` re-measures it);
    ``source`` says where the recipe comes from: a paper's, or the small validation sweep
    named there.  ``None`` means the setting has no tuned recipe and no expectation.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_schedule: str | None = "cosine"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    expected_test_accuracy: float | None = None
    source: str = "generic default, not tuned for this setting"

    def training(self) -> dict[str, Any]:
        """The keyword arguments of :func:`sparsity_lab.train.fit` this recipe sets."""
        return {
            "epochs": self.epochs,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "lr_schedule": self.lr_schedule,
        }


#: The dense recipes of the bundled settings; see :class:`Recipe` and the book's table.
RECIPES: dict[tuple[str, str], Recipe] = {
    ("lenet300", "mnist"): Recipe(
        epochs=40,
        optimizer="sgd",
        lr=0.1,
        expected_test_accuracy=0.94,
        source=(
            "validation sweep (benchmarks/dense_recipes.py --sweep): SGD lr 0.05/0.1/0.2, "
            "20/40 epochs, weight decay 0/5e-4, Adam 1e-3; seeds 0-2 reach 94.1% test"
        ),
    ),
    ("lenet5", "mnist"): Recipe(
        epochs=20,
        optimizer="sgd",
        lr=0.05,
        expected_test_accuracy=0.96,
        source=(
            "validation sweep: SGD lr 0.05/0.1, 10/20 epochs, weight decay 0/5e-4, Adam "
            "1e-3; seeds 0-2 reach 96.5% test"
        ),
    ),
    ("cnn1d", "mnist1d"): Recipe(
        epochs=200,
        optimizer="adam",
        lr=1e-2,
        batch_size=100,
        weight_decay=1e-4,
        lr_schedule=None,
        expected_test_accuracy=0.93,
        source=(
            "the MNIST-1D paper's CNN recipe (Adam, lr 1e-2, batch 100, about 6000 steps, "
            "constant rate; 94% reported), which reaches 91.1% on this smaller split, plus "
            "weight decay 1e-4 chosen on validation; seeds 0-2 reach 94.2% test"
        ),
    ),
    ("resnet_small", "mnist"): Recipe(
        epochs=15,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        expected_test_accuracy=0.96,
        source="two candidates on validation (SGD 0.1 with weight decay, Adam 1e-3); 97.1% test",
    ),
    ("lenet300", "digits"): Recipe(
        epochs=20,
        optimizer="sgd",
        lr=0.1,
        expected_test_accuracy=0.96,
        source="validation sweep: SGD lr 0.05/0.1, 20/40 epochs, Adam 1e-3; 97.0% test",
    ),
    # the sentiment grammar is solved completely: use "chars" where methods must differ
    ("tiny_transformer", "text"): Recipe(
        epochs=20,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.01,
        expected_test_accuracy=0.99,
        source="validation: AdamW 3e-3 for 10/20 epochs; 100% test on seeds 0-2 (saturated)",
    ),
    # next-character prediction: 52-53% held-out accuracy (perplexity about 5.7) against
    # 19% for always answering a space, so pruning has room to show differences
    ("tiny_transformer", "chars"): Recipe(
        epochs=4,
        optimizer="adamw",
        lr=3e-3,
        model_options={"dim": 64, "depth": 2, "n_heads": 4, "pool": "last"},
        expected_test_accuracy=0.52,
        source=(
            "validation sweep: width 32/48/64 and 20k/40k/60k training windows; seeds 0-2 "
            "reach 52.7% test accuracy"
        ),
    ),
    # the same text as a decoder-only language model: every position predicts the next
    # character, so early positions (little context) pull the mean accuracy below chars'
    ("tiny_transformer", "char_lm"): Recipe(
        epochs=4,
        optimizer="adamw",
        lr=3e-3,
        model_options={"dim": 96, "depth": 3, "n_heads": 4, "pool": "none", "causal": True},
        expected_test_accuracy=0.62,
        source=(
            "chars' recipe with a causal mask, every position scored, and 3 blocks of width "
            "96 (351k parameters; 2 of width 64 reached 58.5%); seeds 0-2 reach 62.1% test "
            "accuracy per character (perplexity 3.9), 62.6% on validation"
        ),
    ),
}

#: How far below its recipe's expectation (a mean over seeds) one seed's dense model may
#: fall before it is flagged: the sweep measured seed-to-seed standard deviations of up to
#: 1.2 points (LeNet-300-100 on MNIST), so one point would flag ordinary seeds.
SEED_TOLERANCE = 0.02

#: What :func:`recipe_for` returns for a setting without a tuned recipe.
DEFAULT_RECIPE = Recipe()


def recipe_for(model_name: str, data_name: str) -> Recipe:
    """The recipe of ``(model_name, data_name)``, or :data:`DEFAULT_RECIPE` if none is tuned."""
    return RECIPES.get((model_name, data_name), DEFAULT_RECIPE)


def recipes_table() -> list[dict[str, Any]]:
    """One row per tuned recipe, for the book's table of dense baselines."""
    return [
        {"model": m, "data": d, **dataclasses.asdict(r), "model_options": dict(r.model_options)}
        for (m, d), r in RECIPES.items()
    ]


# ------------------------------------------------------------------------- dense training


def _fingerprint(dataset: TensorDataset) -> str:
    """A short hash of a split's tensors (shapes, dtypes and values)."""
    h = hashlib.sha256()
    for tensor in dataset.tensors:
        h.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy())
    return h.hexdigest()[:16]


#: The library modules a dense model's training runs through, hashed whole.
DENSE_TRAINING_MODULES = (
    "models.py",
    "pooling.py",  # LeNet-5's max-pool
    "train.py",
    "modes.py",
    "data.py",
    "seeding.py",
    "callbacks.py",
    "sparsifier.py",  # the Trainer drives its callbacks through a Sparsifier
)


def _dense_training_sources() -> list[str]:
    """The sources that determine a dense checkpoint besides the values in its key.

    Only the parts of this file that train a dense model count: the rest of the protocol
    (fine-tuning, random baselines, evaluation) changes no checkpoint, and hashing the
    whole file made every edit of it retrain every cached model.
    """
    package = Path(__file__).parent
    sources = [(package / name).read_text() for name in DENSE_TRAINING_MODULES]
    return sources + [inspect.getsource(obj) for obj in (Task, Recipe, recipe_for, train_dense)]


def _code_digest() -> str:
    """A hash of :func:`_dense_training_sources`: a change to them never loads a stale model."""
    h = hashlib.sha256()
    for source in _dense_training_sources():
        h.update(source.encode())
    return h.hexdigest()[:16]


def _state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names and values: a flipped byte changes it."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _load_checkpoint(path: Path, build: Any) -> nn.Module:
    """A model from ``path``, or an error saying why the file cannot be trusted.

    The file holds ``{"state": state_dict, "digest": sha256}``; the state is loaded into a
    model of its own, so a file that fails half-way never leaves weights in the model that
    is trained instead.
    """
    record = torch.load(path, weights_only=True)
    if not isinstance(record, dict) or set(record) != {"state", "digest"}:
        raise ValueError("not a checkpoint of this library (no digest)")
    state = record["state"]
    if _state_digest(state) != record["digest"]:
        raise ValueError("its contents do not match their digest (a damaged file)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"non-finite values in {bad[:3]}")
    model = build()
    model.load_state_dict(state)
    return model


def _save_checkpoint(model: nn.Module, path: Path) -> None:
    """Write atomically under a unique temporary name, so two processes never collide."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state": state, "digest": _state_digest(state)}, buffer)
    write_atomically(path, buffer.getvalue())


#: Settings whose dense training also keeps the weights it had at initialisation and after
#: every epoch (``info["epoch_states"]``), for experiments that ask when something the
#: trained network shows was decided: 05a reads them instead of training the model again.
EPOCH_STATES = {("tiny_transformer", "chars")}


class _EpochStates(Callback):
    """Copies the weights at the start of training and at the end of every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _keep(self, trainer: Any) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    on_train_begin = on_epoch_end = _keep


def _epochs_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-epochs.pt")


def _load_epoch_states(path: Path) -> list[dict[str, torch.Tensor]]:
    """The epoch states written beside a checkpoint, or an error saying why not."""
    record = torch.load(path, weights_only=True)
    if not isinstance(record, dict) or set(record) != {"states", "digests"}:
        raise ValueError("not a file of epoch states of this library")
    if [_state_digest(s) for s in record["states"]] != record["digests"]:
        raise ValueError("its contents do not match their digests (a damaged file)")
    return record["states"]


def _save_epoch_states(states: list[dict[str, torch.Tensor]], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"states": states, "digests": [_state_digest(s) for s in states]}, buffer)
    write_atomically(path, buffer.getvalue())


#: Settings whose dense training also records the scores of the criteria that must watch a
#: whole training (:data:`RECORDED_TRACKERS`), kept beside the checkpoint in
#: ``info["trackers"]``: 02l reads them instead of training its six dense models again.
TRACKED_SCORES = {("lenet300", "mnist"), ("lenet5", "mnist")}

#: The trackers a setting of :data:`TRACKED_SCORES` records, by the criterion that reads each.
RECORDED_TRACKERS: dict[str, type[ScoreTracker]] = {
    "karnin": KarninScores,
    "movement": MovementScores,
}


def _scores_path(path: Path) -> Path:
    """Where a checkpoint's tracker scores live; named by the trackers' code, so a change to
    how they accumulate never loads stale sums (the model then trains again to record them)."""
    h = hashlib.sha256()
    for cls in (ScoreTracker, *RECORDED_TRACKERS.values()):
        h.update(inspect.getsource(cls).encode())
    return path.with_name(f"{path.stem}-scores-{h.hexdigest()[:8]}.pt")


def _flat(trackers: Mapping[str, ScoreTracker]) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{field}.{weight}": tensor
        for name, tracker in trackers.items()
        for field, tensors in tracker.state_dict().items()
        for weight, tensor in tensors.items()
    }


def _load_trackers(path: Path) -> dict[str, ScoreTracker]:
    """The trackers written beside a checkpoint, or an error saying why not."""
    record = torch.load(path, weights_only=True)
    if not isinstance(record, dict) or set(record) != {"trackers", "digest"}:
        raise ValueError("not a file of tracker scores of this library")
    if set(record["trackers"]) != set(RECORDED_TRACKERS):
        raise ValueError(f"it holds the trackers {sorted(record['trackers'])}")
    trackers = {}
    for name, cls in RECORDED_TRACKERS.items():
        trackers[name] = cls()
        trackers[name].load_state_dict(record["trackers"][name])
    if _state_digest(_flat(trackers)) != record["digest"]:
        raise ValueError("its contents do not match their digest (a damaged file)")
    return trackers


def _save_trackers(trackers: Mapping[str, ScoreTracker], path: Path) -> None:
    record = {name: tracker.state_dict() for name, tracker in trackers.items()}
    buffer = io.BytesIO()
    torch.save({"trackers": record, "digest": _state_digest(_flat(trackers))}, buffer)
    write_atomically(path, buffer.getvalue())


def _writable_cache(directory: Path) -> None:
    """Create ``directory`` and check it takes files, before any training is spent."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise OSError(
            f"the checkpoint cache {directory} is not writable ({err}); pass cache_dir=False "
            "to train without caching, or point $SPARSITY_LAB_CACHE at a writable folder"
        ) from err


def train_dense(
    t: Task,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    recipe: Recipe | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the task's dense model with its recipe, or load it from the checkpoint cache.

    ``epochs``, ``lr`` and ``optimizer`` override the recipe (a smoke run trains for fewer
    epochs); ``recipe`` replaces it whole (a tuning sweep tries candidates this way).

    Returns the model and ``{"val_accuracy", "test_accuracy", "cached", "recipe",
    "expected_test_accuracy", "flags"}``, and for a setting of :data:`EPOCH_STATES`
    ``"epoch_states"`` (the state dicts at initialisation and after each epoch, kept beside
    the checkpoint; read them, do not change them), and for a setting of
    :data:`TRACKED_SCORES` ``"trackers"`` (:data:`RECORDED_TRACKERS` as they ended the
    training, kept beside it too; pass one as ``tracker=`` to its criterion): the flags say
    when the model is below
    the accuracy its recipe is documented to reach (checked only when the task uses the
    default data and the recipe's settings, with :data:`SEED_TOLERANCE`).  ``cache_dir=None`` uses
    :func:`default_cache_dir`; pass ``False`` to never cache.  A process that wants a
    checkpoint another is training waits for it and loads it
    (:func:`sparsity_lab.paths.exclusive`).
    """
    base = recipe_for(t.model_name, t.data_name)
    overrides = {"epochs": epochs, "lr": lr, "optimizer": optimizer}
    recipe = dataclasses.replace(
        recipe or base, **{k: v for k, v in overrides.items() if v is not None}
    )
    key = {
        "model": t.model_name,
        "data": t.data_name,
        "seed": t.seed,
        **recipe.training(),
        "batch_size": recipe.batch_size,
        "model_options": dict(recipe.model_options),
        "input_shape": list(t.bundle.input_shape),
        "n_classes": t.bundle.n_classes,
        # data options (a teacher's width, a subset's size) change the examples without
        # changing any name above, so the key also covers the training examples themselves
        "train_data": _fingerprint(t.bundle.train),
        # a change to how models are built or trained must not load a stale checkpoint
        "code": _code_digest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = None
    if cache_dir is not False:
        directory = Path(cache_dir or default_cache_dir())
        _writable_cache(directory)
        path = directory / f"{t.model_name}-{t.data_name}-{digest}.pt"

    def build() -> nn.Module:
        return t.build(**recipe.model_options)

    def cached(load: Any, file: Path | None) -> Any:
        if file is None or not file.exists():
            return None
        try:
            return load(file)
        except Exception as err:  # a damaged, foreign or stale file: retrain from scratch
            warnings.warn(f"ignoring unreadable checkpoint {file}: {err}; retraining", stacklevel=2)
            return None

    keep_epochs = (t.model_name, t.data_name) in EPOCH_STATES
    keep_scores = (t.model_name, t.data_name) in TRACKED_SCORES
    epochs_path = _epochs_path(path) if keep_epochs and path is not None else None
    scores_path = _scores_path(path) if keep_scores and path is not None else None
    train, val, test = t.loaders(recipe.batch_size)
    # Two notebooks of `make book` that want the same model at once: one trains it, the
    # other waits for its checkpoint instead of training it a second time.
    with exclusive(path) if path is not None else contextlib.nullcontext():
        model = cached(lambda file: _load_checkpoint(file, build), path)
        states = cached(_load_epoch_states, epochs_path) if keep_epochs else None
        trackers = cached(_load_trackers, scores_path) if keep_scores else None
        was_cached = (
            model is not None
            and (states is not None or not keep_epochs)
            and (trackers is not None or not keep_scores)
        )
        if not was_cached:
            model = build()  # a fresh model: nothing of a bad file can leak into it
            # copying the weights and accumulating scores change no number the training
            # computes (tests check both)
            recorder = [_EpochStates()] if keep_epochs else []
            trackers = {n: cls() for n, cls in RECORDED_TRACKERS.items()} if keep_scores else None
            callbacks = [*recorder, *(trackers or {}).values()]
            fit(model, train, val, seed=t.seed, progress=progress, callbacks=callbacks,
                **recipe.training())  # fmt: skip
            states = recorder[0].states if keep_epochs else None
            if path is not None:
                _save_checkpoint(model, path)
                if epochs_path is not None:
                    _save_epoch_states(states, epochs_path)
                if scores_path is not None:
                    _save_trackers(trackers, scores_path)
    info = {
        "val_accuracy": evaluate(model, val)["accuracy"],
        "test_accuracy": evaluate(model, test)["accuracy"],
        "cached": was_cached,
        "recipe": recipe,
        "expected_test_accuracy": base.expected_test_accuracy,
    }
    checked = t.default_data and recipe == base
    info["flags"] = flags_mod.join(
        flags_mod.check(
            dense_accuracy=info["test_accuracy"],
            expected_dense_accuracy=base.expected_test_accuracy if checked else None,
            dense_tolerance=SEED_TOLERANCE,
        )
    )
    if keep_epochs:
        info["epoch_states"] = states
    if keep_scores:
        info["trackers"] = trackers
    return model, info


_DENSE_MODELS: dict[str, tuple[Task, nn.Module, dict[str, Any]]] = {}


def dense(
    model_name: str,
    data_name: str,
    seed: int = 0,
    *,
    epochs: int | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
    **data_options: Any,
) -> tuple[Task, nn.Module, dict[str, Any]]:
    """``(task, model, info)``: the recipe's dense model of a setting, for one seed.

    What every notebook and benchmark starts from.  Trained once per process (and cached on
    disk, see :func:`train_dense`); each call returns a fresh copy of the model, so pruning
    it never changes what the next call gets.  ``epochs`` overrides the recipe's (a smoke
    run); ``data_options`` go to :func:`task`.
    """
    key = json.dumps(
        [model_name, data_name, seed, epochs, str(cache_dir), data_options],
        sort_keys=True,
        default=str,
    )
    if key not in _DENSE_MODELS:
        t = task(model_name, data_name, seed=seed, **data_options)
        model, info = train_dense(t, epochs=epochs, cache_dir=cache_dir, progress=False)
        _DENSE_MODELS[key] = (t, model, info)
    t, model, info = _DENSE_MODELS[key]
    info = dict(info)
    if "trackers" in info:  # a pruning reads them; a copy keeps the next call's sums whole
        info["trackers"] = copy.deepcopy(info["trackers"])
    return t, copy.deepcopy(model), info


def dense_with_trackers(
    model_name: str,
    data_name: str,
    seed: int,
    trackers: Mapping[str, Any],
    *,
    epochs: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    **data_options: Any,
) -> tuple[Task, nn.Module, Mapping[str, Any], dict[str, Any]]:
    """``(task, model, trackers, info)``: a setting's dense model, trained with ``trackers``.

    Criteria that accumulate their scores while the network trains (Karnin's sensitivity,
    movement pruning) must watch the dense training itself.  The settings of
    :data:`TRACKED_SCORES` record :data:`RECORDED_TRACKERS` in their cached training
    (:func:`dense` returns them); for any other tracker or setting, the model is trained
    here, on every call, with the recipe's hyper-parameters and the callbacks ``trackers``
    (a name for each, returned as given).
    ``epochs``, ``lr`` and ``optimizer`` override the recipe, ``data_options`` go to
    :func:`task`, as in :func:`dense`; trackers that only read the weights and gradients
    leave the training unchanged, so the model is the one :func:`dense` returns for the same
    arguments.  ``info`` has :func:`train_dense`'s keys but ``cached``, its flags the same.
    """
    t = task(model_name, data_name, seed=seed, **data_options)
    base = recipe_for(model_name, data_name)
    overrides = {"epochs": epochs, "lr": lr, "optimizer": optimizer}
    recipe = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    train, val, test = t.loaders(recipe.batch_size)
    model = t.build(**recipe.model_options)
    callbacks = list(trackers.values())
    fit(model, train, val, seed=seed, callbacks=callbacks, progress=False, **recipe.training())
    info = {
        "val_accuracy": evaluate(model, val)["accuracy"],
        "test_accuracy": evaluate(model, test)["accuracy"],
        "recipe": recipe,
        "expected_test_accuracy": base.expected_test_accuracy,
    }
    checked = t.default_data and recipe == base
    info["flags"] = flags_mod.join(
        flags_mod.check(
            dense_accuracy=info["test_accuracy"],
            expected_dense_accuracy=base.expected_test_accuracy if checked else None,
            dense_tolerance=SEED_TOLERANCE,
        )
    )
    return t, model, trackers, info


# --------------------------------------------------------------------- the shared protocol


def sparse_start(model: nn.Module, found: Mapping[str, torch.Tensor], **attach: Any) -> nn.Module:
    """Attach ``found`` masks to a freshly initialised ``model`` and rescale it, in place.

    Each unit's kept weights are multiplied by ``sqrt(fan_in / kept fan_in)``: default
    initialisations set the weight variance from the dense fan-in, so without this the
    signal shrinks at every layer by the root of the kept share of its inputs, and a very
    sparse network starts with logits set mostly by its biases (the sparsity-aware
    initialisation of Evci et al. 2022).  What that costs depends on the mask and the
    training (03b's exercise 1 measures it for LeNet-300-100 at 98%).
    Every comparison of masks at initialisation in this project starts this way, so that
    none is judged on its start.  ``attach``
    goes to :func:`sparsity_lab.masks.attach` (e.g. ``dense_grad=True``).
    """
    for name, mask in found.items():
        masks.attach(model, name, mask.clone(), **attach)
    rescale_fan_in(model, list(found))
    return model


def random_like(found: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random masks with exactly the per-layer counts of ``found``: the fair random baseline.

    A random mask compared with a method's mask must differ only in *which* weights it
    keeps, not in how many per layer; a uniform or ERK random mask would mix the two.
    """
    return shuffle_masks(found, seed=seed)


def train_sparse(
    method: Any,
    model_name: str,
    data_name: str,
    seed: int = 0,
    *,
    epochs: float | None = None,
    model: nn.Module | None = None,
    callbacks: Any = (),
    progress: bool | None = None,
    **data_options: Any,
) -> tuple[nn.Module, Task, Any, Any]:
    """Train a fresh model of a setting with a training-time ``method``, on the recipe.

    The optimizer, learning rate, schedule, weight decay and batch size are the dense
    recipe's, so a sparse method and the dense model it is compared with differ only in the
    method; ``epochs`` overrides the recipe's (a smoke run, or a longer budget) and
    ``model`` replaces the fresh model (its weights are trained in place).  Returns
    ``(model, task, flops, history)``: ``flops`` is the run's
    :class:`~sparsity_lab.methods.base.TrainingFlops` counter (``.total``, ``.epochs``).
    """
    from .methods.base import TrainingFlops  # the methods build on this module's helpers

    t = task(model_name, data_name, seed=seed, **data_options)
    recipe = recipe_for(model_name, data_name)
    model = t.build() if model is None else model
    train, val, _ = t.loaders(recipe.batch_size)
    flops = TrainingFlops(method)
    training = {**recipe.training(), "epochs": recipe.epochs if epochs is None else epochs}
    history = method.fit(
        model, train, val, seed=seed, callbacks=[flops, *callbacks], progress=progress, **training
    )
    return model, t, flops, history


def pruned_after_training(
    model_name: str,
    data_name: str,
    seed: int = 0,
    sparsity: float = 0.9,
    *,
    method: str = "magnitude",
    epochs: int | None = None,
    finetune_epochs: int = 2,
) -> dict[str, Any]:
    """Train dense (the cached recipe's model), prune once, fine-tune: one result row.

    The classic "train, prune, fine-tune" baseline that the sparse-from-scratch and
    at-initialisation recipes are compared with.  Returns ``{"test_accuracy",
    "measured_sparsity", "epochs", "training_flops", "flags"}``; the epochs and FLOPs add
    the dense training (``epochs`` overrides the recipe's, as in :func:`dense`) and the
    fine-tuning.
    """
    t, model, info = dense(model_name, data_name, seed, epochs=epochs)
    dense_epochs = info["recipe"].epochs  # the recipe's, or ``epochs`` where given
    dense_flops = training_flops(model, len(t.bundle.train), dense_epochs)
    run = prune_and_finetune(model, t, method, sparsity, finetune_epochs=finetune_epochs)
    return {
        "test_accuracy": run["test_accuracy"],
        "measured_sparsity": run["measured_sparsity"],
        "epochs": dense_epochs + run["finetune_epochs"],
        "training_flops": dense_flops + run["finetune_flops"],
        "flags": run["flags"],
    }


def training_flops(model: nn.Module, n_examples: int, epochs: float) -> float:
    """FLOPs of training ``model`` as it is masked now: 3 forward passes per example-epoch.

    A forward pass counts a multiply and an add per nonzero weight and position, as
    :func:`sparsity_lab.report` does (biases and activations are left out).
    The backward pass costs about two forward passes (the gradients of the inputs and of
    the weights), the convention of the sparse-training papers (RigL, Top-KAST).
    """
    per_example = float(report(model)["sparse_flops"].iloc[-1])
    return 3.0 * per_example * n_examples * epochs


def finetune(
    model: nn.Module,
    t: Task,
    epochs: int,
    *,
    lr: float = 0.01,
    optimizer: str = "sgd",
    progress: bool | None = None,
    **fit_options: Any,
) -> dict[str, float]:
    """Fine-tune ``model`` with its masks fixed; returns the budget in epochs and FLOPs.

    Every comparison states its fine-tuning budget this way, so that two methods are
    compared at the same cost.  ``epochs=0`` returns a zero budget without training.
    """
    if epochs < 0:
        raise ValueError(f"fine-tuning epochs must be >= 0, got {epochs}")
    train, val, _ = t.loaders()
    flops = training_flops(model, len(t.bundle.train), epochs)
    if epochs > 0:
        fit(
            model,
            train,
            val,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            seed=t.seed,
            progress=progress,
            **fit_options,
        )
    return {"finetune_epochs": epochs, "finetune_flops": flops}


@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    # masked weights computed once for the pass, not once per batch
    with evaluating(model), parametrize.cached():
        outputs, labels = zip(*((model(x), y) for x, y in loader), strict=True)
    return torch.cat(outputs), torch.cat(labels)


def evaluate_run(
    model: nn.Module,
    t: Task,
    *,
    target_sparsity: float | None = None,
    split: str = "test",
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, loss, reached sparsity and sanity flags of a (pruned) model on ``split``.

    Returns ``{"accuracy", "loss", "sparsity", "flags"}`` (plus ``"perplexity"`` for
    next-token data).  ``flags`` is the ``"; "``-joined list of :func:`sparsity_lab.flags.
    check`: at chance level, target not reached, a layer pruned to 100%, a disconnected
    network, a class never predicted.  Test data are for reporting: make every choice on
    ``split="val"``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    loader = dict(zip(("train", "val", "test"), t.loaders(), strict=True))[split]
    logits, labels = _predict(model, loader)
    loss = float(nn.functional.cross_entropy(logits, labels))
    predictions = logits.argmax(dim=1)
    accuracy = int((predictions == labels).sum()) / labels.numel()  # per labelled position
    reached = measured_sparsity(model, names)
    example = t.bundle.test.tensors[0][:8]
    result: dict[str, Any] = {"accuracy": accuracy, "loss": loss, "sparsity": reached}
    if t.data_name in NEXT_TOKEN_DATA:
        result["perplexity"] = math.exp(loss)
    train_labels = t.bundle.train.tensors[1]
    result["flags"] = flags_mod.join(
        flags_mod.check(
            accuracy=accuracy,
            chance=flags_mod.chance_accuracy(train_labels, t.bundle.n_classes),
            target_sparsity=target_sparsity,
            reached_sparsity=reached,
            model=model,
            example_input=example,
            # a class missing from a next-token test split is not the model's fault
            predictions=None if t.data_name in NEXT_TOKEN_DATA else predictions,
            n_classes=t.bundle.n_classes,
        )
    )
    return result


def finetune_and_measure(
    model: nn.Module,
    t: Task,
    sparsity: float | None,
    *,
    finetune_epochs: int = 2,
    lr: float = 0.01,
    optimizer: str = "sgd",
    progress: bool | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Measure an already masked ``model``, fine-tune it with its masks fixed, measure again.

    The second half of :func:`prune_and_finetune`, for masks made some other way (a
    :func:`random_like` baseline, a search).  Returns ``{"measured_sparsity",
    "pruned_accuracy", "val_accuracy", "test_accuracy", "finetune_epochs",
    "finetune_flops", "flags", "pruned_flags"}``: validation accuracy right after pruning,
    then after fine-tuning, the test accuracy, the budget, the flags of the final model on
    the test split and those of the pruned model before fine-tuning, on validation
    (:func:`evaluate_run`; ``sparsity`` is the target the flags check, counted over
    ``names``, default every Linear/Conv weight).
    """
    pruned = evaluate_run(model, t, split="val", target_sparsity=sparsity, names=names)
    budget = finetune(model, t, finetune_epochs, lr=lr, optimizer=optimizer, progress=progress)
    final = evaluate_run(model, t, target_sparsity=sparsity, names=names)
    return {
        "measured_sparsity": final["sparsity"],
        "pruned_accuracy": pruned["accuracy"],
        "val_accuracy": evaluate_run(model, t, split="val")["accuracy"],
        "test_accuracy": final["accuracy"],
        **budget,
        "flags": final["flags"],
        "pruned_flags": pruned["flags"],
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
) -> dict[str, Any]:
    """Prune ``model`` in place, fine-tune it with masks fixed, and measure each stage.

    Returns what :func:`finetune_and_measure` returns: accuracy on the validation split
    right after pruning, then after fine-tuning, the fine-tuning budget and the sanity flags
    of the final model on the test split.
    """
    if "data" not in prune_options:
        prune_options["data"] = t.loaders()[0]
    prune(model, method, sparsity, seed=t.seed, **prune_options)
    # the target counts the pruned tensors only: those named (or every Linear/Conv) less
    # the excluded ones
    targets = prune_options.get("targets") or default_targets(model)
    names = [n for n in targets if n not in set(prune_options.get("exclude", ()))]
    return finetune_and_measure(
        model,
        t,
        sparsity,
        finetune_epochs=finetune_epochs,
        lr=lr,
        optimizer=optimizer,
        progress=progress,
        names=names,
    )
