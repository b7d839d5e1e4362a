"""Early structure adaptation: IoU, Hamming, the early-bird rule and the mask tracker."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsity_lab.methods.lottery import mask_distance
from sparsity_lab.phenomena import structure
from sparsity_lab.train import fit


def test_iou_and_hamming_of_known_masks():
    a = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    # kept by both: positions 0, 4; kept by either: 0, 1, 2, 4
    assert structure.iou(a, b) == pytest.approx(2 / 4)
    # differ at positions 1 and 2 of 6
    assert structure.hamming(a, b) == pytest.approx(2 / 6)
    assert structure.iou(a, a) == 1.0 and structure.hamming(a, a) == 0.0
    empty = torch.zeros(3, dtype=torch.bool)
    assert structure.iou(empty, empty) == 1.0


def test_dict_masks_are_pooled_and_hamming_matches_lottery():
    a = {"x": torch.tensor([[1, 0], [0, 0]]), "y": torch.tensor([1, 1, 1])}
    b = {"x": torch.tensor([[1, 1], [0, 0]]), "y": torch.tensor([0, 1, 1])}
    assert structure.iou(a, b) == pytest.approx(3 / 5)  # inter {x00, y1, y2}; union adds x01, y0
    assert structure.hamming(a, b) == pytest.approx(mask_distance(a, b)) == pytest.approx(2 / 7)


def test_mismatched_masks_fail_clearly():
    with pytest.raises(ValueError, match="different tensors"):
        structure.iou({"a": torch.ones(2)}, {"b": torch.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        structure.hamming({"a": torch.ones(2)}, {"a": torch.ones(3)})
    with pytest.raises(TypeError):
        structure.iou(torch.ones(2), {"a": torch.ones(2)})


def test_stabilisation_epoch_is_the_early_bird_rule():
    d = [0.5, 0.2, 0.05, 0.3, 0.04, 0.03, 0.02]
    # the first run of 2 values below 0.1 ends at index 5 (epoch 6)
    assert structure.stabilisation_epoch(d, epsilon=0.1, window=2) == 6
    assert structure.stabilisation_epoch(d, epsilon=0.1, window=1) == 3
    assert structure.stabilisation_epoch(d, epsilon=0.01, window=1) is None
    assert structure.stabilisation_epoch(d, epsilon=0.1, window=2, epochs=range(10, 17)) == 15
    with pytest.raises(ValueError, match="window"):
        structure.stabilisation_epoch(d, window=0)
    with pytest.raises(ValueError, match="epochs"):
        structure.stabilisation_epoch(d, epochs=[1, 2])


def test_criterion_selector_leaves_the_model_alone_and_matches_topk():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    picked = structure.criterion_selector("magnitude", 0.5)(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # global magnitude: the kept weights are the 15 largest |w| of both layers
    w = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).abs()
    threshold = w.sort(descending=True).values[14]
    kept = torch.cat([picked["0.weight"].flatten(), picked["2.weight"].flatten()])
    assert int(kept.sum()) == 15
    assert torch.equal(kept, w >= threshold)


def test_tracker_records_init_and_every_epoch():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    tracker = structure.MaskTracker({"mag": structure.criterion_selector("magnitude", 0.5)})
    fit(model, loader, epochs=3, lr=0.1, callbacks=[tracker], progress=False)
    table = tracker.table()
    assert list(table["epoch"]) == [0, 1, 2, 3]
    last = table.iloc[-1]
    assert last["iou_to_final"] == 1.0 and last["hamming_to_final"] == 0.0
    # the distance to the previous record agrees with a direct computation
    recs = tracker.records["mag"]
    assert table.iloc[2]["hamming_to_previous"] == pytest.approx(
        structure.hamming(recs[2], recs[1])
    )


def test_head_selector_drops_the_least_important_heads():
    from sparsity_lab.models import build

    torch.manual_seed(0)
    model = build("tiny_transformer", input_shape=(6,), n_classes=2, vocab_size=10, n_heads=4)
    batch = (torch.randint(1, 10, (8, 6)), torch.randint(0, 2, (8,)))
    keep = structure.head_selector(batch, 0.25)(model)
    total = sum(k.numel() for k in keep.values())
    assert sum(int(k.sum()) for k in keep.values()) == total - round(0.25 * total)


@pytest.mark.parametrize("at_init", [True, False])
def test_replay_records_what_watching_the_training_records(at_init):
    from sparsity_lab.recipes import _EpochStates

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    selectors = {"mag": structure.criterion_selector("magnitude", 0.5)}
    watching, states = structure.MaskTracker(selectors, at_init=at_init), _EpochStates()
    fit(model, loader, epochs=3, lr=0.1, callbacks=[watching, states], progress=False)
    before = copy.deepcopy(model.state_dict())
    replayed = structure.MaskTracker(selectors, at_init=at_init).replay(model, states.states)
    assert replayed.epochs == watching.epochs == [0, 1, 2, 3][0 if at_init else 1 :]
    for mine, theirs in zip(replayed.records["mag"], watching.records["mag"], strict=True):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # unchanged
