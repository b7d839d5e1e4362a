"""Does every sparse method converge on every bundled model, in every seed?

A divergence is a bug to find, not a result: this checks every registered training method
and regularizer on one setting per bundled model (LeNet-300-100 and LeNet-5 on the MNIST
subset, the 1-D CNN on MNIST-1D, the small ResNet with BatchNorm on 8x8 digits as in the
CrAM table, the residual MLP on 8x8 digits, the tiny transformer on next-character
prediction from 16,000 of its 40,000 training examples, :data:`DATA_OPTIONS`, so that its
runs fit in about a minute each), at 90% sparsity, on seeds 0-2.

Each run is :func:`sparsity_lab.regularizers.compare.run` (what the benchmark harness's
``regularize`` kind runs): a fresh model trains with the method for a quarter of the
recipe's epochs (``--epochs-factor``), at least one epoch and :data:`MIN_STEPS` optimizer
steps (but never more than the recipe's epochs: on the 8x8 digits, whose 1,257 training
images make 10 steps an epoch, that is the whole recipe; the transformer's minimum,
:data:`TRANSFORMER_MIN_STEPS`, is its whole recipe too).  A quarter is where the methods
with a warm-up have left it: at 2 epochs on LeNet-300-100, variational dropout is still at
chance level after its projection (its strength and its log alpha still moving), at 10
epochs it is at 87% test accuracy.

* A training method trains with the optimizer, learning rate, schedule, momentum, weight
  decay and batch of the setting's dense recipe (the harness's protocol for its ``train``
  kind), the schedule spread over the run's epochs, and ends at its own sparsity.  CrAM
  and CrAM+ end with the dense model they train (it is meant to be pruned once
  afterwards), so for them the dense model is what is checked.
* A regularizer trains with Adam at 1e-3 and the recipe's batch, the protocol its default
  strength is set for (:mod:`sparsity_lab.regularizers.base`: under another optimizer a
  default strength can be far off, which is why the regularization benchmark chooses
  strengths on validation), with no learning-rate schedule (a schedule would fight its
  strength tuner), is projected to the target and fine-tunes with its masks fixed for 2
  epochs (one where an epoch alone is the setting's minimum of steps) with SGD (momentum
  0.9) at 0.01, the regularization benchmark's rate, or at 0.003, whichever gives the
  better validation accuracy (:data:`FINETUNE_LRS`).  At 0.01 alone, group lasso on the
  1-D CNN diverged in seed 2: the penalty had shrunk the last convolution to a norm of
  0.16 and the unpenalised head had grown to 5.5, and the first epoch took the training
  loss to 3.97 and the model to chance level (at 0.003: 36% validation accuracy).  The
  rate Adam trained with (1e-3) fails elsewhere: slimming's projected 1-D CNN ended with a
  training loss above the prior's (4.15 in seed 1; SGD at 0.003: 0.95).  Without the
  fine-tuning, the small ResNet's projected models were judged with the BatchNorm
  statistics of the unprojected ones, and most regularizers were at chance there.  A
  regularizer that only removes whole units (``supported_patterns`` without
  ``"unstructured"``: group lasso, slimming, polarization, the Bayesian compressions)
  removes :data:`CHANNEL_SPARSITY` of each layer's output units.

Each setting also trains its dense model the way a training method trains (the control,
:data:`DENSE`): where the control does not converge either, the budget is too short for
the setting and its runs say nothing of the methods.

A run **converged** when all of these hold:

* it did not raise;
* every weight and the final model's training loss are finite;
* that loss is below the loss of predicting the training split's class frequencies (the
  entropy of its labels; ``ln(classes)`` for balanced classes): the model learned more than
  the prior;
* its test accuracy is not flagged "at chance level", and the network is not disconnected
  (its output depends on its input, :func:`sparsity_lab.flags.check`).

Other flags (a class never predicted, a target missed, a layer emptied on a path the
network can do without: a residual branch, an attention query or key) are kept with the
run and counted separately: after a quarter of the training they are no divergence, and an
emptied layer that cuts the network is flagged "disconnected" too.  Short budgets leave
slow methods far from their final accuracy, so the accuracies here are no comparison of
methods; the leaderboard tables are.

The script saves every run's measurements to JSON after each run, with the protocol; a
rerun with the same ``--out`` and protocol reuses them (runs that raised are retried), and a
changed protocol starts afresh.  It prints each run that did not converge, with the reason.
Regenerate the committed result (notebook 11 reads it; about an hour on one core) with:
``python benchmarks/convergence.py --out benchmarks/leaderboard/convergence.json``;
``--models lenet300,cnn1d`` and ``--methods gmp,rigl`` run a part.

The transformer's budget has its own ablation: ``--transformer-train 8000
--transformer-min-steps 100`` trains it on half the examples for 2 epochs (126 steps, a
quarter of this budget's), the check's budget before it was measured: there the dense
control converged and 12 sparse methods ended at chance level on some seed.  Committed as
``benchmarks/leaderboard/convergence-transformer-short.json`` (notebook 11 compares the
two).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from run_info import machine

from sparsity_lab import recipes, registry
from sparsity_lab.regularizers import compare
from sparsity_lab.train import evaluate

HERE = Path(__file__).parent
#: One setting per bundled model: (model, data).
SETTINGS = (
    ("lenet300", "mnist"),
    ("lenet5", "mnist"),
    ("cnn1d", "mnist1d"),
    ("resnet_small", "digits"),
    ("resmlp", "digits"),
    ("tiny_transformer", "chars"),
)
#: Data options of a setting, where its default data would make the grid too slow.
TRANSFORMER = ("tiny_transformer", "chars")
DATA_OPTIONS = {TRANSFORMER: {"n_train": 16000}}
SPARSITY = 0.9
CHANNEL_SPARSITY = 0.5  # for the regularizers that remove whole units
SEEDS = (0, 1, 2)
#: The control: the dense model trained like a training method.  Where it does not converge
#: either, the setting's budget is too short to say anything of the methods.
DENSE = "dense"
MIN_STEPS = 100  # 20 steps of the small ResNet on digits left every method at chance
#: The transformer's minimum: its recipe's 4 epochs.  In 126 steps 12 sparse methods ended
#: at chance level on some seed there (the short ablation in the module's docstring).
TRANSFORMER_MIN_STEPS = 500
#: The regularizers' fine-tuning rates (SGD), the best on validation kept.
FINETUNE_LRS = (0.01, 0.003)
#: Flags that mean the run failed, whatever its loss (the others are kept, not judged).  An
#: emptied layer fails a run where it cuts the network ("disconnected"); one on a path the
#: network can do without (a residual branch, an attention query or key) is structure the
#: method learned, kept with the run's other flags.
FAILING_FLAGS = ("at chance level", "disconnected")


def methods() -> list[str]:
    """Every registered training method and regularizer, by name, after the dense control."""
    return [DENSE, *registry.available("training"), *registry.available("regularizer")]


def protocol(epochs_factor: float) -> dict:
    """What decides a run besides its key: a saved run is reused only under the same."""
    return {
        "version": 9,
        "data_options": {"/".join(k): v for k, v in DATA_OPTIONS.items()},
        "regularizer_finetune": "sgd at the best on validation of 0.01 and 0.003, 2 epochs "
        "(1 where an epoch has min_steps)",
        "min_steps": MIN_STEPS,
        "transformer_min_steps": TRANSFORMER_MIN_STEPS,
        "sparsity": SPARSITY,
        "channel_sparsity": CHANNEL_SPARSITY,
        "epochs_factor": epochs_factor,
        "regularizer_optimizer": ["adam", 1e-3],
        "training_method_optimizer": "the dense recipe's, with its schedule",
        "training_method_finetune_epochs": 0,
    }


def task_of(model_name: str, data_name: str, seed: int) -> recipes.Task:
    """A setting's task for one seed, with its :data:`DATA_OPTIONS`."""
    options = DATA_OPTIONS.get((model_name, data_name), {})
    return recipes.task(model_name, data_name, seed=seed, **options)


def min_steps(model_name: str, data_name: str) -> int:
    """The fewest optimizer steps of a setting's runs."""
    return TRANSFORMER_MIN_STEPS if (model_name, data_name) == TRANSFORMER else MIN_STEPS


def epochs_for(model_name: str, data_name: str, epochs_factor: float) -> int:
    """The epochs of every run of a setting (see the module's docstring)."""
    recipe = recipes.recipe_for(model_name, data_name)
    n_train = len(task_of(model_name, data_name, 0).bundle.train)
    steps = min_steps(model_name, data_name)
    at_least = max(1, math.ceil(steps / math.ceil(n_train / recipe.batch_size)))
    return min(recipe.epochs, max(round(epochs_factor * recipe.epochs), at_least))


def prior_loss(model_name: str, data_name: str, seed: int) -> float:
    """The cross-entropy of predicting the training split's class frequencies."""
    labels = task_of(model_name, data_name, seed).bundle.train.tensors[1].flatten()
    shares = torch.bincount(labels).double() / labels.numel()
    shares = shares[shares > 0]
    return float(-(shares * shares.log()).sum())


def one_run(model_name: str, data_name: str, method: str, seed: int, epochs: int) -> dict:
    """Train one method on one seed; its measurements (judged by :func:`reasons`)."""
    t = task_of(model_name, data_name, seed)
    recipe = recipes.recipe_for(model_name, data_name)
    kind = "training" if method == DENSE else registry.entry(method).kind
    fit_options = {"momentum": recipe.momentum, "weight_decay": recipe.weight_decay,
                   "lr_schedule": recipe.lr_schedule}  # fmt: skip
    training = {"optimizer": recipe.optimizer, "lr": recipe.lr, "fit_options": fit_options}
    sparsity, pattern = SPARSITY, "unstructured"
    if kind == "regularizer":
        steps = math.ceil(len(t.bundle.train) / recipe.batch_size)
        finetune = {"finetune_optimizer": "sgd", "finetune_lr": FINETUNE_LRS,
                    "finetune_epochs": 1 if steps >= min_steps(model_name, data_name)
                    else 2}  # fmt: skip
        training = {"optimizer": "adam", "lr": 1e-3, **finetune}
        if "unstructured" not in registry.get(method).supported_patterns:
            sparsity, pattern = CHANNEL_SPARSITY, "channel"
    if method == DENSE:
        sparsity = 0.0
    described = {"optimizer": training["optimizer"], "lr": training["lr"], "pattern": pattern,
                 "target_sparsity": sparsity}  # fmt: skip
    training = {"finetune_epochs": 0, **training}  # a training method is not fine-tuned
    model = t.build()
    start = time.perf_counter()
    try:
        out = compare.run(t, method, sparsity, pattern=pattern, model=model, epochs=epochs,
                          batch_size=recipe.batch_size, **training)  # fmt: skip
    except Exception as err:  # a crash is a failure to converge too, with its message
        return {**described, "error": f"{type(err).__name__}: {err}"}
    train_loss = float(evaluate(model, t.loaders(recipe.batch_size)[0])["loss"])
    return {
        **described,
        "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        "train_loss": train_loss,
        "test_accuracy": out["test_accuracy"],
        "measured_sparsity": out["measured_sparsity"],
        "finetune_lr": out["finetune_lr"] if kind == "regularizer" else None,
        "flags": out["flags"],
        "seconds": time.perf_counter() - start,
    }


def reasons(run: dict, prior: float) -> list[str]:
    """Why a run did not converge (empty: it converged); see the module's docstring."""
    if "error" in run:
        return [f"raised {run['error']}"]
    found = []
    if not (run["finite"] and math.isfinite(run["train_loss"])):
        found.append("a weight or the training loss is not finite")
    elif run["train_loss"] >= prior:
        found.append(f"training loss {run['train_loss']:.3f} >= the prior's {prior:.3f}")
    flags = [f for f in run["flags"].split("; ") if f]
    found += [f for f in flags if any(failing in f for failing in FAILING_FLAGS)]
    return found


def main() -> None:
    global MIN_STEPS, TRANSFORMER_MIN_STEPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs-factor", type=float, default=0.25, help="of the recipe's epochs (at least 2)"
    )
    parser.add_argument(
        "--models", default=",".join(m for m, _ in SETTINGS), help="comma-separated models"
    )
    parser.add_argument("--methods", default="", help="comma-separated methods (default: all)")
    parser.add_argument("--out", default=str(HERE / "results" / "convergence.json"))
    parser.add_argument(
        "--min-steps", type=int, default=MIN_STEPS, help=f"per run (default {MIN_STEPS})"
    )
    parser.add_argument(
        "--transformer-min-steps",
        type=int,
        default=TRANSFORMER_MIN_STEPS,
        help=f"per run of the tiny transformer (default {TRANSFORMER_MIN_STEPS})",
    )
    parser.add_argument(
        "--transformer-train",
        type=int,
        default=DATA_OPTIONS[TRANSFORMER]["n_train"],
        help="training examples of the tiny transformer's setting (an ablation of its budget)",
    )
    args = parser.parse_args()
    # the options are part of the protocol that the saved runs are kept under
    MIN_STEPS, TRANSFORMER_MIN_STEPS = args.min_steps, args.transformer_min_steps
    DATA_OPTIONS[TRANSFORMER] = {"n_train": args.transformer_train}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load = os.getloadavg()
    known = [m for m, _ in SETTINGS]
    unknown = set(args.models.split(",")) - set(known)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {known}")
    chosen = [s for s in SETTINGS if s[0] in args.models.split(",")]
    names = args.methods.split(",") if args.methods else methods()
    out = Path(args.out)
    report = {
        "benchmark": "convergence",
        "protocol": protocol(args.epochs_factor),
        "seeds": list(SEEDS),
        "settings": [list(s) for s in SETTINGS],
        "methods": methods(),
        "runs": {},
    }
    if out.exists():
        saved = json.loads(out.read_text())
        if saved.get("protocol") == report["protocol"]:
            report["runs"] = saved["runs"]
        else:
            print(f"{out} holds runs of another protocol: starting afresh")
    epochs = {s: epochs_for(*s, args.epochs_factor) for s in SETTINGS}
    grid = {f"{m}/{d}/{method}/{seed}/{epochs[m, d]}" for m, d in SETTINGS
            for method in methods() for seed in SEEDS}  # fmt: skip
    # runs of other lengths belong to another protocol
    runs = report["runs"] = {k: v for k, v in report["runs"].items() if k in grid}
    out.parent.mkdir(parents=True, exist_ok=True)
    for model_name, data_name in chosen:
        for method in names:
            for seed in SEEDS:
                key = f"{model_name}/{data_name}/{method}/{seed}/{epochs[model_name, data_name]}"
                if key not in runs or "error" in runs[key]:
                    runs[key] = one_run(
                        model_name, data_name, method, seed, epochs[model_name, data_name]
                    )
                    # saved after every run: an interrupted sweep keeps what it measured
                    out.write_text(json.dumps(report, indent=2))
    # judged now, over every saved run of this protocol (other models' too)
    priors: dict[tuple, float] = {}
    for key, run in runs.items():
        model_name, data_name, _, seed, _ = key.split("/")
        where = (model_name, data_name, int(seed))
        if where not in priors:
            priors[where] = prior_loss(*where)
        run["prior_loss"] = priors[where]
        run["reasons"] = reasons(run, priors[where])
        run["converged"] = not run["reasons"]
    failed = {k: r for k, r in runs.items() if not r["converged"]}
    print(f"{len(runs) - len(failed)} of {len(runs)} runs converged")
    for key, r in failed.items():
        print(f"  {key}: {'; '.join(r['reasons'])}")
    report.update(
        # settings whose dense control did not converge: too short a budget to judge there
        too_short=sorted({"/".join(k.split("/")[:2]) for k in failed if k.split("/")[2] == DENSE}),
        target="every method converges on every bundled model in every seed",
        met=not failed and len(runs) == len(SETTINGS) * len(methods()) * len(SEEDS),
        machine=machine(load),
    )
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
