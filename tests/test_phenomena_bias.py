"""Who pays for pruning: PIEs, uncertainty, interdependence, ECE and threshold calibration."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from sparsity_lab.data import DataBundle
from sparsity_lab.phenomena import bias


def test_attribute_labels_follow_the_table():
    digits = torch.tensor([0, 1, 7, 8])
    y = bias.attribute_labels(digits, {"even": (0, 2, 4, 6, 8), "one_or_seven": (1, 7)})
    assert y.tolist() == [[1, 0], [0, 1], [0, 1], [1, 0]]
    split = TensorDataset(torch.zeros(4, 3), digits)
    b = bias.multilabel_bundle(DataBundle("d", split, split, split, 10, (3,)))
    assert b.n_classes == len(bias.ATTRIBUTES) and b.train.tensors[1].dtype == torch.float32


def test_pies_on_a_constructed_population():
    # 3 dense and 3 pruned models, 4 examples (multi-class predictions)
    dense = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 1, 3]])
    pruned = np.array([[0, 2, 2, 3], [0, 2, 2, 3], [1, 1, 2, 3]])
    # modal dense: 0, 1, 2, 3; modal pruned: 0, 2, 2, 3 -> only example 1 is a PIE
    assert bias.pies(dense, pruned).tolist() == [False, True, False, False]
    # a tie (one vote each) goes to the smaller label
    assert bias.modal_prediction(np.array([[3], [1]])).tolist() == [1]
    with pytest.raises(ValueError, match="different things"):
        bias.pies(dense, pruned[:, :3])


def test_uncertainty_share_counts_the_closed_interval():
    p = np.array([0.05, 0.1, 0.5, 0.9, 0.95])
    assert bias.uncertainty_share(p) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        bias.uncertainty_share(p, low=0.9, high=0.1)


def test_calibration_error_on_a_known_histogram():
    # bin (0.5, 0.6]: 4 predictions at 0.55, 2 correct -> |0.5 - 0.55| = 0.05, weight 0.4
    # bin (0.9, 1.0]: 6 predictions at 0.95, all correct -> |1 - 0.95| = 0.05, weight 0.6
    conf = np.array([0.55] * 4 + [0.95] * 6)
    correct = np.array([1, 1, 0, 0] + [1] * 6)
    assert bias.calibration_error(conf, correct, n_bins=10) == pytest.approx(0.05)
    # perfectly calibrated: confidence 0.75 and 3 of 4 right
    assert bias.calibration_error(np.full(4, 0.75), np.array([1, 1, 1, 0])) == pytest.approx(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bias.calibration_error(np.array([1.5]), np.array([1]))


def test_binary_calibration_error_uses_the_confidence_of_the_decision():
    probs = np.array([0.8, 0.2, 0.8, 0.2])  # all with confidence 0.8
    targets = np.array([1, 0, 0, 0])  # 3 of 4 right
    assert bias.binary_calibration_error(probs, targets) == pytest.approx(abs(0.75 - 0.8))


def test_label_correlation_and_interdependence():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])  # perfectly anti-correlated labels
    assert bias.label_correlation(targets)[0, 1] == pytest.approx(-1)
    assert bias.interdependence_gap(targets, targets) == 0.0
    independent = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])  # correlation 0
    assert bias.interdependence_gap(independent, targets) == pytest.approx(1.0)
    constant = np.array([[1, 0], [1, 1], [1, 0], [1, 1]])
    assert bias.label_correlation(constant)[0, 1] == 0.0


def test_calibrated_thresholds_recover_a_shifted_label():
    rng = np.random.default_rng(0)
    targets = rng.random((400, 2)) < 0.5
    # label 0 is well placed at 0.5; label 1's scores are shifted down by 0.3
    probs = np.where(targets, 0.7, 0.3) + rng.normal(0, 0.05, (400, 2))
    probs[:, 1] -= 0.3
    th = bias.calibrate_thresholds(probs, targets)
    assert th[0] == pytest.approx(0.5)
    assert 0.05 <= th[1] <= 0.35
    acc = bias.label_accuracy(probs[None], targets, th)[0]
    assert acc.min() > 0.99 > bias.label_accuracy(probs[None], targets)[0].min()


def test_predictive_auc_and_accuracy_deltas():
    assert bias.predictive_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert bias.predictive_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert np.isnan(bias.predictive_auc([0.1, 0.2], [1, 1]))
    targets = np.array([[1, 0], [1, 1]])
    dense = np.array([[[0.9, 0.1], [0.9, 0.9]]])  # all right
    sparse = np.array([[[0.9, 0.1], [0.9, 0.1]]])  # label 1 of example 1 wrong
    assert bias.accuracy_deltas(dense, sparse, targets).tolist() == [0.0, -0.5]


def test_attribute_probs_sum_the_digits_with_each_attribute():
    attrs = {"even": (0, 2), "zero": (0,)}
    digit_probs = np.array([[0.5, 0.2, 0.3], [0.0, 1.0, 0.0]])
    # even: p(0) + p(2); zero: p(0)
    assert bias.attribute_probs(digit_probs, attrs).tolist() == [[0.8, 0.5], [0.0, 0.0]]
    assert bias.attribute_matrix(attrs, 3).tolist() == [[1, 1], [0, 0], [1, 0]]
    # float32 softmax sums can exceed 1 by rounding; the result stays a probability
    assert bias.attribute_probs(np.array([[0.6, 0.0, 0.4000001]]), attrs).max() == 1.0


def test_calibration_runs_pair_each_model_with_itself():
    # one dense and one pruned model, 4 examples, 2 labels
    targets = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    dense = targets[None] * 0.8 + 0.1  # right everywhere
    # label 0 stays right; label 1's scores drop by 0.3: 0.6 -> 0.3 for positives,
    # 0.2 for negatives, so 0.5 calls every example negative (2 of 4 right)
    pruned = np.array([[[0.9, 0.3], [0.9, 0.2], [0.1, 0.3], [0.1, 0.2]]])
    pop = {
        "seeds": [7],
        "targets": targets,
        "val_targets": targets,
        "dense": {"test": dense, "val": dense},
        0.9: {"test": pruned, "val": pruned},
    }
    runs = bias.calibration_runs(pop).set_index("thresholds")
    assert runs.loc["uncalibrated", "worst_label_delta"] == pytest.approx(-0.5)
    # a threshold in (0.2, 0.3] separates label 1 again: every decision right
    assert runs.loc["calibrated", "worst_label_delta"] == pytest.approx(0.0)
    assert runs.loc["calibrated", "changed"] == pytest.approx(2 / 8)  # two positives flip
    assert runs.loc["calibrated", "moved"] == pytest.approx(0.5)
    assert set(runs["seed"]) == {7} and runs["hurt_label"].tolist() == [1, 1]
    assert runs.loc["calibrated", "hurt_threshold"] <= 0.3


def test_calibration_cannot_help_a_label_with_constant_outputs():
    targets = np.array([[1], [0], [0], [0]])
    constant = np.full((1, 4, 1), 0.3)  # no information: the best rule is the majority
    pop = {
        "seeds": [0],
        "targets": targets,
        "val_targets": targets,
        "dense": {"test": targets[None] * 1.0, "val": targets[None] * 1.0},
        0.98: {"test": constant, "val": constant},
    }
    runs = bias.calibration_runs(pop)
    assert runs["changed"].max() == 0.0 and runs["moved"].max() == 0.0
    assert runs["worst_label_delta"].tolist() == [-0.25, -0.25]


def test_population_prunes_each_dense_model_and_flags_runs():
    from sparsity_lab import recipes

    t = recipes.task("cnn1d", "mnist1d", seed=0, num_samples=200)
    dense = [(t, t.build(), {"flags": ""})]
    pop = bias.population(dense, [0.5], finetune_epochs=0)
    assert pop["dense"]["test"].shape == (1, len(t.bundle.test), len(bias.ATTRIBUTES))
    # attribute probabilities are sums of a softmax: inside [0, 1]
    assert 0 <= pop[0.5]["val"].min() and pop[0.5]["val"].max() <= 1 + 1e-6
    runs = pop["runs"]
    assert runs["sparsity"].tolist() == [0.0, 0.5] and "flags" in runs
    assert runs["reached_sparsity"].iloc[1] == pytest.approx(0.5, abs=0.01)
    assert bias.bias_table(pop, list(bias.ATTRIBUTES))["population"].tolist() == ["dense", 0.5]
