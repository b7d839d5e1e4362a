"""Who pays for pruning: how the errors of pruned models differ from the dense ones.

After "Bias in pruned vision models" (Iofinova et al. 2023), which studies populations of
dense and pruned multi-label models, and "What do compressed deep neural networks
forget?" (Hooker et al. 2019).  Pruning can keep the average accuracy and still move the
errors: onto rare labels, onto hard examples, onto examples the models were unsure of.

Measurements, on arrays of probabilities ``(models, examples, labels)``:

* per-label accuracy and its change (:func:`label_accuracy`, :func:`accuracy_deltas`);
* pruning-identified exemplars, PIEs (:func:`pies`): examples whose *modal* prediction
  over the pruned population differs from the modal prediction of the dense population;
* uncertainty (:func:`uncertainty_share`): the share of outputs in [0.1, 0.9];
* interdependence (:func:`interdependence_gap`): how far the correlations between the
  predicted labels move from the correlations between the true labels;
* calibration (:func:`calibration_error`, ECE) and the countermeasure, per-label threshold
  calibration on validation data (:func:`calibrate_thresholds`; :func:`calibration_runs`
  pairs each pruned model's calibrated and uncalibrated decisions);
* whether a score computed on the dense models predicts which examples become PIEs
  (:func:`predictive_auc`).

The task (:func:`multilabel_bundle`) turns a digit data set into binary attributes of the
digit (even, prime, has a loop, ...) with base rates from 10% to 50%, a small stand-in for
the face attributes of the paper.  The models are the recipe's digit classifiers
(:func:`sparsity_lab.recipes.dense`); a model's probability of an attribute is the softmax
probability it gives the digits that have it (:func:`attribute_probs`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from .. import flags as flags_mod
from .. import recipes
from ..data import DataBundle
from ..modes import evaluating
from ..pruning import prune

#: Binary attributes of a digit: name -> the digits for which it holds.
ATTRIBUTES: dict[str, tuple[int, ...]] = {
    "even": (0, 2, 4, 6, 8),
    "large": (5, 6, 7, 8, 9),
    "prime": (2, 3, 5, 7),
    "loop": (0, 6, 8, 9),
    "straight": (1, 4, 7),
    "one_or_seven": (1, 7),
    "zero": (0,),
}


# --- the task -----------------------------------------------------------------------------


def attribute_labels(
    digits: torch.Tensor, attributes: Mapping[str, Sequence[int]] = ATTRIBUTES
) -> torch.Tensor:
    """Float 0/1 targets ``(n, len(attributes))``: whether each digit has each attribute."""
    cols = [torch.isin(digits, torch.tensor(list(pos))) for pos in attributes.values()]
    return torch.stack(cols, dim=1).float()


def multilabel_bundle(
    bundle: DataBundle, attributes: Mapping[str, Sequence[int]] = ATTRIBUTES
) -> DataBundle:
    """The same inputs with attribute targets; ``n_classes`` becomes the number of labels.

    Train such a model with ``loss_fn=nn.BCEWithLogitsLoss()``.
    """

    def convert(split: TensorDataset) -> TensorDataset:
        x, y = split.tensors
        if y.dim() != 1 or y.is_floating_point():
            raise ValueError("multilabel_bundle needs integer digit labels, one per example")
        return TensorDataset(x, attribute_labels(y, attributes))

    return DataBundle(
        f"{bundle.name}-attributes",
        convert(bundle.train),
        convert(bundle.val),
        convert(bundle.test),
        n_classes=len(attributes),
        input_shape=bundle.input_shape,
    )


def attribute_matrix(
    attributes: Mapping[str, Sequence[int]] = ATTRIBUTES, n_digits: int = 10
) -> np.ndarray:
    """``(n_digits, labels)`` 0/1 matrix: entry ``[d, j]`` is 1 when digit ``d`` has
    attribute ``j``."""
    out = np.zeros((n_digits, len(attributes)))
    for j, digits in enumerate(attributes.values()):
        out[list(digits), j] = 1.0
    return out


def attribute_probs(
    digit_probs: np.ndarray, attributes: Mapping[str, Sequence[int]] = ATTRIBUTES
) -> np.ndarray:
    """Probability of each attribute from a digit classifier's softmax ``(..., 10)``: the
    total probability of the digits that have it, ``(..., labels)``, clipped to [0, 1]."""
    digit_probs = np.asarray(digit_probs, dtype=float)
    summed = digit_probs @ attribute_matrix(attributes, digit_probs.shape[-1])
    return np.clip(summed, 0.0, 1.0)  # rounding can put a sum of a softmax above 1


# --- measurements --------------------------------------------------------------------------


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 3:
        raise ValueError(
            f"probabilities must have shape (models, examples, labels), got {probs.shape}; "
            "stack one (examples, labels) array per model"
        )
    return probs


def label_accuracy(
    probs: np.ndarray, targets: np.ndarray, thresholds: float | np.ndarray = 0.5
) -> np.ndarray:
    """Accuracy of each model on each label, ``(models, labels)``; a probability at or
    above the label's threshold predicts 1."""
    probs = _check_probs(probs)
    preds = probs >= np.asarray(thresholds)
    return (preds == np.asarray(targets, dtype=bool)[None]).mean(axis=1)


def accuracy_deltas(
    dense_probs: np.ndarray, sparse_probs: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Per label: mean accuracy of the pruned population minus that of the dense one."""
    return label_accuracy(sparse_probs, targets).mean(0) - label_accuracy(
        dense_probs, targets
    ).mean(0)


def modal_prediction(preds: np.ndarray) -> np.ndarray:
    """The most frequent prediction over models (axis 0) for every entry.

    ``preds`` holds integer labels ``(models, ...)``; ties go to the smallest label, so
    the result is repeatable.
    """
    preds = np.asarray(preds)
    if preds.dtype == bool:
        preds = preds.astype(int)
    if not np.issubdtype(preds.dtype, np.integer):
        raise TypeError("modal_prediction needs integer (or bool) predictions, not scores")
    n_values = int(preds.max()) + 1 if preds.size else 1
    counts = np.stack([(preds == v).sum(axis=0) for v in range(n_values)])
    return counts.argmax(axis=0)  # argmax takes the first maximum: the smallest label


def pies(dense_preds: np.ndarray, sparse_preds: np.ndarray) -> np.ndarray:
    """Pruning-identified exemplars (Hooker et al. 2019): True where the modal prediction
    of the pruned population differs from that of the dense population.

    Both arrays are ``(models, examples[, labels])`` integer predictions; the result has
    the shape of one model's predictions.  The populations may differ in size.
    """
    dense_preds, sparse_preds = np.asarray(dense_preds), np.asarray(sparse_preds)
    if dense_preds.shape[1:] != sparse_preds.shape[1:]:
        raise ValueError(
            f"the populations predict different things: {dense_preds.shape[1:]} vs "
            f"{sparse_preds.shape[1:]} per model"
        )
    return modal_prediction(dense_preds) != modal_prediction(sparse_preds)


def uncertainty_share(probs: np.ndarray, low: float = 0.1, high: float = 0.9) -> float:
    """The share of output probabilities in ``[low, high]``: how often a model is unsure."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    probs = np.asarray(probs, dtype=float)
    return float(((probs >= low) & (probs <= high)).mean())


def label_correlation(values: np.ndarray) -> np.ndarray:
    """Pearson correlation between the columns (labels) of ``(examples, labels)`` values;
    a constant column correlates 0 with everything (and 1 with itself)."""
    values = np.asarray(values, dtype=float)
    centred = values - values.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    safe = np.where(norms > 0, norms, 1.0)
    corr = (centred.T @ centred) / np.outer(safe, safe)
    corr[norms == 0, :] = 0.0
    corr[:, norms == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr


def interdependence_gap(preds: np.ndarray, targets: np.ndarray) -> float:
    """Mean absolute difference, over pairs of labels, between the correlation of the
    predicted labels and that of the true labels: 0 when a model keeps the labels'
    dependence structure, larger when its outputs tie labels together (or apart) more
    than the data do."""
    pred_corr, true_corr = label_correlation(preds), label_correlation(targets)
    k = pred_corr.shape[0]
    off = ~np.eye(k, dtype=bool)
    return float(np.abs(pred_corr - true_corr)[off].mean()) if k > 1 else 0.0


def calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017).

    ``ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|`` over ``n_bins`` equal-width
    bins of the confidence; bin ``b`` holds confidences in ``(b/n, (b+1)/n]`` (0 goes to
    the first bin).
    """
    confidence = np.asarray(confidence, dtype=float).ravel()
    correct = np.asarray(correct, dtype=float).ravel()
    if confidence.shape != correct.shape:
        raise ValueError("confidence and correct must have one entry each per prediction")
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    if confidence.size == 0:
        raise ValueError("no predictions to calibrate")
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("confidences must lie in [0, 1]")
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def binary_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 10) -> float:
    """ECE of binary outputs: confidence ``max(p, 1 - p)``, correct when ``p >= 0.5``
    agrees with the target; pooled over every example and label."""
    probs = np.asarray(probs, dtype=float)
    targets = np.broadcast_to(np.asarray(targets, dtype=bool), probs.shape)
    confidence = np.maximum(probs, 1 - probs)
    return calibration_error(confidence, (probs >= 0.5) == targets, n_bins)


def calibrate_thresholds(
    probs: np.ndarray, targets: np.ndarray, grid: Sequence[float] | None = None
) -> np.ndarray:
    """Per-label decision thresholds that maximise accuracy on held-out data.

    ``probs`` and ``targets`` are ``(examples, labels)`` (validation data of one model).
    Of equally good thresholds, the one nearest 0.5 wins, so a label that needs no
    correction keeps the default.  The countermeasure of Iofinova et al. (2023).
    """
    probs = np.asarray(probs, dtype=float)
    targets = np.asarray(targets, dtype=bool)
    # k / 20 holds 0.5 exactly (np.linspace(0.05, 0.95, 19) gives 0.49999999999999994)
    grid = np.arange(1, 20) / 20 if grid is None else np.asarray(grid, dtype=float)
    order = np.argsort(np.abs(grid - 0.5), kind="stable")  # nearest 0.5 first
    grid = grid[order]
    acc = ((probs[None] >= grid[:, None, None]) == targets[None]).mean(axis=1)  # (grid, labels)
    return grid[acc.argmax(axis=0)]


def calibration_runs(pop: Mapping[str, Any]) -> pd.DataFrame:
    """Each pruned model with its decisions at 0.5 and at its calibrated thresholds.

    One row per (``sparsity``, ``seed``, ``thresholds`` in ``"uncalibrated"`` /
    ``"calibrated"``) of a :func:`population`: ``accuracy`` (mean over labels),
    ``worst_label_delta`` (the model's label accuracy minus its own dense parent's, at the
    label where that difference is lowest), ``changed`` (share of test decisions the
    thresholds flip), ``moved`` (share of labels whose threshold is not 0.5),
    ``hurt_label`` (index of the label that loses most at 0.5) and ``hurt_threshold`` (its
    threshold).  The two rows of a seed are a pair, ready for
    :func:`sparsity_lab.stats.paired`.
    """
    targets, val_targets = pop["targets"], pop["val_targets"]
    seeds = list(pop["seeds"])
    dense_acc = label_accuracy(pop["dense"]["test"], targets)  # (models, labels)
    rows = []
    for key in _sparsities(pop):
        probs, val_probs = pop[key]["test"], pop[key]["val"]
        for i, seed in enumerate(seeds):
            th = calibrate_thresholds(val_probs[i], val_targets)
            flipped = float(((probs[i] >= 0.5) != (probs[i] >= th)).mean())
            hurt = int(np.argmin(label_accuracy(probs[i][None], targets)[0] - dense_acc[i]))
            for name, thresholds in (("uncalibrated", np.full_like(th, 0.5)), ("calibrated", th)):
                acc = label_accuracy(probs[i][None], targets, thresholds)[0]
                rows.append(
                    {
                        "sparsity": key,
                        "seed": seed,
                        "thresholds": name,
                        "accuracy": float(acc.mean()),
                        "worst_label_delta": float((acc - dense_acc[i]).min()),
                        "changed": flipped if name == "calibrated" else 0.0,
                        "moved": float(np.mean(~np.isclose(thresholds, 0.5))),
                        "hurt_label": hurt,
                        "hurt_threshold": float(thresholds[hurt]),
                    }
                )
    return pd.DataFrame(rows)


def predictive_auc(score: np.ndarray, affected: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling affected examples (e.g. PIEs)
    from the others: 0.5 is chance, 1 a perfect predictor; NaN if only one kind exists."""
    affected = np.asarray(affected, dtype=bool).ravel()
    if affected.all() or not affected.any():
        return float("nan")
    return float(roc_auc_score(affected, np.asarray(score, dtype=float).ravel()))


# --- the experiment ---------------------------------------------------------------------


def _sparsities(pop: Mapping[str, Any]) -> list[Any]:
    return [k for k in pop if not isinstance(k, str)]


def predict_attribute_probs(
    model: nn.Module,
    dataset: TensorDataset,
    attributes: Mapping[str, Sequence[int]] = ATTRIBUTES,
    batch_size: int = 512,
) -> np.ndarray:
    """Attribute probabilities of a digit classifier on every example of ``dataset``,
    ``(examples, labels)``: its softmax summed over the digits with each attribute."""
    out = []
    with evaluating(model), torch.no_grad(), parametrize.cached():
        for x, _ in DataLoader(dataset, batch_size=batch_size):
            out.append(torch.softmax(model(x), dim=1))
    return attribute_probs(torch.cat(out).numpy(), attributes)


def population(
    dense_models: Sequence[tuple[Any, nn.Module, Mapping[str, Any]]],
    sparsities: Sequence[float],
    *,
    finetune_epochs: int = 3,
    lr: float = 1e-3,
    optimizer: str = "adam",
    attributes: Mapping[str, Sequence[int]] = ATTRIBUTES,
    eval_bundle: DataBundle | None = None,
) -> dict[Any, Any]:
    """Prune every dense model to every sparsity (global magnitude, then
    ``finetune_epochs`` of :func:`sparsity_lab.recipes.finetune`, masks fixed) and collect
    the attribute probabilities of the dense and pruned populations.

    ``dense_models`` holds one ``(task, model, info)`` of :func:`sparsity_lab.recipes.dense`
    per seed (the recipe's digit classifiers; they are not changed).  Every model is
    evaluated on the same examples, the validation and test splits of ``eval_bundle``
    (default: the first task's bundle), so that the populations can be compared example
    by example.  Returns ``{"seeds", "targets", "val_targets", "runs", "dense": {"test",
    "val"}, sparsity: {"test", "val"}}``: attribute targets, arrays ``(models, examples,
    labels)`` and ``runs``, one row per model with its digit accuracy on its own task's
    test split, reached sparsity, fine-tuning budget and sanity flags
    (:func:`sparsity_lab.recipes.evaluate_run`).
    """
    if not dense_models:
        raise ValueError("population needs at least one dense model")
    bundle = eval_bundle or dense_models[0][0].bundle
    if bundle.test.tensors[1].dim() != 1 or bundle.test.tensors[1].is_floating_point():
        raise ValueError("eval_bundle must hold integer digit labels, one per example")
    out: dict[Any, Any] = {
        "seeds": [t.seed for t, _, _ in dense_models],
        "targets": attribute_labels(bundle.test.tensors[1], attributes).numpy(),
        "val_targets": attribute_labels(bundle.val.tensors[1], attributes).numpy(),
    }
    collected: dict[Any, dict[str, list]] = {
        k: {"test": [], "val": []} for k in ["dense", *sparsities]
    }
    runs = []
    for t, dense, info in dense_models:
        for key in collected:
            model = copy.deepcopy(dense)
            budget = {"finetune_epochs": 0, "finetune_flops": 0.0}
            target = None if key == "dense" else key
            if target is not None:
                prune(model, "magnitude", target)
                budget = recipes.finetune(
                    model, t, finetune_epochs, lr=lr, optimizer=optimizer, progress=False
                )
            run = recipes.evaluate_run(model, t, target_sparsity=target)
            found = [run["flags"]] + ([info.get("flags", "")] if target is None else [])
            runs.append(
                {
                    "sparsity": 0.0 if target is None else target,
                    "seed": t.seed,
                    "digit_accuracy": run["accuracy"],
                    "reached_sparsity": run["sparsity"],
                    **budget,
                    "flags": flags_mod.join(f for f in found if f),
                }
            )
            for split in ("test", "val"):
                dataset = getattr(bundle, split)
                collected[key][split].append(predict_attribute_probs(model, dataset, attributes))
    for key, parts in collected.items():
        out[key] = {split: np.stack(arrays) for split, arrays in parts.items()}
    out["runs"] = pd.DataFrame(runs)
    return out


def bias_table(pop: Mapping[str, Any], labels: Sequence[str]) -> pd.DataFrame:
    """One row per population (``dense`` and each sparsity) of :func:`population`.

    Columns: ``population, accuracy`` (mean over models and labels), ``worst_label_delta``
    and ``worst_label`` (the label whose accuracy falls most), ``pie_share`` (share of
    test examples with a PIE on any label), ``uncertainty``, ``interdependence``,
    ``ece``, ``calibrated_accuracy`` and ``calibrated_worst_delta`` (after per-label
    threshold calibration on validation data), and ``auc_dense_uncertainty`` /
    ``auc_dense_disagreement`` (how well the dense population's mean closeness to 0.5 and
    its spread across seeds predict the PIE examples).
    """
    targets, val_targets = pop["targets"], pop["val_targets"]
    dense = pop["dense"]["test"]
    dense_acc = label_accuracy(dense, targets).mean(0)
    dense_preds = (dense >= 0.5).astype(int)
    # dense-model scores per example: how unsure the dense models are, and how they disagree
    unsure = -np.abs(dense - 0.5).mean(axis=(0, 2))
    disagreement = dense.std(axis=0).mean(axis=1)
    rows = []
    for key in ["dense", *_sparsities(pop)]:
        probs, val_probs = pop[key]["test"], pop[key]["val"]
        acc = label_accuracy(probs, targets).mean(0)
        thresholds = np.stack([calibrate_thresholds(v, val_targets) for v in val_probs])
        calibrated = np.stack(
            [
                label_accuracy(p[None], targets, th)[0]
                for p, th in zip(probs, thresholds, strict=True)
            ]
        ).mean(0)
        preds = (probs >= 0.5).astype(int)
        pie = pies(dense_preds, preds).any(axis=1)
        delta = acc - dense_acc
        rows.append(
            {
                "population": key,
                "accuracy": float(acc.mean()),
                "worst_label_delta": float(delta.min()),
                "worst_label": labels[int(delta.argmin())],
                "pie_share": float(pie.mean()),
                "uncertainty": uncertainty_share(probs),
                "interdependence": float(np.mean([interdependence_gap(p, targets) for p in preds])),
                "ece": float(np.mean([binary_calibration_error(p, targets) for p in probs])),
                "calibrated_accuracy": float(calibrated.mean()),
                "calibrated_worst_delta": float((calibrated - dense_acc).min()),
                "auc_dense_uncertainty": predictive_auc(unsure, pie),
                "auc_dense_disagreement": predictive_auc(disagreement, pie),
            }
        )
    return pd.DataFrame(rows)
