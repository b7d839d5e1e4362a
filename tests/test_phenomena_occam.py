"""Occam's hill: label noise and the A/B/C regions."""

import pytest
import torch
from torch.utils.data import TensorDataset

from sparsity_lab.phenomena import occam


def test_label_noise_flips_exactly_the_fraction_to_other_classes():
    y = torch.arange(10).repeat(20)
    noisy = occam.with_label_noise(TensorDataset(torch.zeros(200, 1), y), 0.3, 10, seed=1)
    changed = noisy.tensors[1] != y
    assert int(changed.sum()) == 60  # every chosen label moves to a *different* class
    assert noisy.tensors[1].min() >= 0 and noisy.tensors[1].max() <= 9
    same = occam.with_label_noise(TensorDataset(torch.zeros(200, 1), y), 0.3, 10, seed=1)
    assert torch.equal(same.tensors[1], noisy.tensors[1])
    with pytest.raises(ValueError, match="fraction"):
        occam.with_label_noise(TensorDataset(torch.zeros(2, 1), y[:2]), 1.5, 10)


def test_regions_on_a_hand_made_curve():
    s = [0.5, 0.7, 0.8, 0.9, 0.95]
    acc = [0.92, 0.95, 0.905, 0.85, 0.5]
    assert occam.occam_regions(s, acc, 0.90, tolerance=0.01) == ["A", "A", "B", "C", "C"]
    assert occam.occam_regions(s, acc, 0.90, tolerance=0.1) == ["B", "B", "B", "B", "C"]
    assert occam.hill(s, acc, 0.90) == {"sparsity": 0.7, "gain": pytest.approx(0.05)}
    with pytest.raises(ValueError):
        occam.occam_regions(s, acc[:2], 0.9, 0.0)
