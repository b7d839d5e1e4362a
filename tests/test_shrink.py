"""shrink: smaller dense models that compute what the masked ones compute, on every model."""

import copy
import warnings

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks, models, shrink

SHAPES = {
    "lenet300": {"input_shape": (784,)},
    "lenet5": {"input_shape": (1, 28, 28)},
    "cnn1d": {"input_shape": (1, 40)},
    "resmlp": {"input_shape": (40,)},
    "resnet_small": {"input_shape": (1, 12, 12)},
    "tiny_transformer": {"input_shape": (10,), "vocab_size": 24},
}
# which coupled groups each model has
GRANULARITIES = {
    "lenet300": ["channel"],
    "lenet5": ["channel"],
    "cnn1d": ["channel"],
    "resmlp": ["channel", "layer"],
    "resnet_small": ["channel", "layer"],
    "tiny_transformer": ["channel", "head", "layer"],
}


def build(name, seed=0):
    torch.manual_seed(seed)
    model = models.build(name, n_classes=10, **SHAPES[name])
    # trained-looking BatchNorm: a removed channel's shift is then far from zero
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=gen)
            m.running_var.uniform_(0.5, 2, generator=gen)
            m.bias.data.uniform_(-1, 1, generator=gen)
    return model.eval()


def batch(model, n=64, seed=7):
    return shrink.example_batch(model, n, seed=seed)


def max_diff(a, b, x):
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def n_params(model):
    return sum(p.numel() for p in model.parameters())


CASES = [(name, g) for name, gs in GRANULARITIES.items() for g in gs]


@pytest.mark.parametrize(("name", "granularity"), CASES)
def test_every_bundled_model_shrinks_to_the_same_outputs(name, granularity):
    model = build(name)
    shrink.prune_coupled(model, granularity, 0.5)
    small = shrink.shrink(model).eval()
    # the bound, 1e-5 absolute, in float32 on a batch of 64
    assert {p.dtype for p in small.parameters()} == {torch.float32}
    assert max_diff(model, small, batch(model)) <= 1e-5
    assert n_params(small) < n_params(model)
    assert not sl.masks.masks(small)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("pattern", ["channel", "input"])
def test_per_tensor_structured_masks_shrink_exactly(name, pattern):
    model = build(name, seed=1)
    targets = [
        n for n in sl.pruning.default_targets(model) if n not in sl.patterns.misfits(model, pattern)
    ]
    sl.prune(model, "magnitude", 0.4, pattern=pattern, targets=targets, budget="uniform")
    small = shrink.shrink(model).eval()
    assert max_diff(model, small, batch(model)) <= 1e-5


def test_coupled_channels_go_whole_so_no_constant_needs_folding():
    model = build("resnet_small")
    new = shrink.prune_coupled(model, "channel", 0.5)
    gone = ~new["stages.0.0.conv1.weight"].flatten(1).any(dim=1)
    rows_gone = ~new["stem.0.weight"].flatten(1).any(dim=1)  # conv2 writes the stem's group
    conv2 = new["stages.0.0.conv2.weight"]
    # the reader (conv2) lost the matching input channels as well, and nothing else
    assert not conv2[:, gone].any()
    assert conv2[~rows_gone][:, ~gone].all()
    assert int(conv2.sum()) == int((~rows_gone).sum()) * int((~gone).sum()) * 9
    small = shrink.shrink(model)
    assert not any(isinstance(m, shrink.OffsetConv2d) for m in small.modules())
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_input_model_is_left_untouched():
    model = build("resnet_small")
    shrink.prune_coupled(model, "channel", 0.5)
    x = batch(model)
    with torch.no_grad():
        before = model(x)
    state = copy.deepcopy(model.state_dict())
    shrink.shrink(model)
    assert sl.masks.masks(model)  # still masked
    with torch.no_grad():
        assert torch.equal(model(x), before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_chain_shapes_follow_closed_forms():
    model = build("lenet5")
    shrink.prune_coupled(model, "channel", 0.5)
    small = shrink.shrink(model)
    assert small.conv1.weight.shape == (3, 1, 5, 5)
    assert small.conv2.weight.shape == (8, 3, 5, 5)
    # the flatten between conv2 and fc1: each kept channel brings its 5x5 map of columns
    assert small.fc1.weight.shape == (60, 8 * 25)
    assert small.fc2.weight.shape == (42, 60)
    assert small.fc3.weight.shape == (10, 42)  # the output stays
    expected = (3 * 25 + 3) + (8 * 3 * 25 + 8) + (60 * 200 + 60) + (42 * 60 + 42) + (10 * 42 + 10)
    assert n_params(small) == expected


def test_flatten_columns_map_to_the_right_channels():
    model = build("lenet5")
    keep = torch.ones(16, 6, 5, 5, dtype=torch.bool)
    keep[[2, 9]] = False  # filters 2 and 9 of conv2
    sl.masks.attach(model, "conv2.weight", keep)
    small = shrink.shrink(model)
    kept = [c for c in range(16) if c not in (2, 9)]
    cols = torch.cat([torch.arange(25 * c, 25 * c + 25) for c in kept])
    assert torch.equal(small.fc1.weight.detach(), model.fc1.weight.detach()[:, cols])


def test_batchnorm_entries_follow_their_channels():
    model = build("resnet_small")
    keep = torch.ones(8, 8, 3, 3, dtype=torch.bool)
    keep[[1, 6]] = False
    sl.masks.attach(model, "stages.0.0.conv1.weight", keep)  # inside the branch: free to go
    with pytest.warns(UserWarning, match="offset map of size"):
        small = shrink.shrink(model)
    bn, old = small.stages[0][0].bn1, model.stages[0][0].bn1
    kept = [0, 2, 3, 4, 5, 7]
    assert bn.num_features == 6
    for attr in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn, attr).detach(), getattr(old, attr).detach()[kept])
    assert small.stages[0][0].conv2.weight.shape == (8, 6, 3, 3)
    # the removed channels' BatchNorm shift reaches conv2 through zero padding: an offset map
    assert isinstance(small.stages[0][0].conv2, shrink.OffsetConv2d)
    assert small.stages[0][0].conv2.offset.shape == (8, 12, 12)
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5
    # the map holds for the example's size only: another size is refused, not broadcast
    for side in (1, 20):
        with pytest.raises(ValueError, match=r"offset map measured for outputs of size"):
            small.eval()(torch.randn(2, 1, side, side))


def test_residual_group_keeps_a_channel_any_member_still_writes():
    model = build("resnet_small")
    stem = torch.ones(8, 1, 3, 3, dtype=torch.bool)
    stem[[0, 3]] = False
    sl.masks.attach(model, "stem.0.weight", stem)
    conv2 = torch.ones(8, 8, 3, 3, dtype=torch.bool)
    conv2[[3, 5]] = False  # block 0 adds into the same channels (identity shortcut)
    sl.masks.attach(model, "stages.0.0.conv2.weight", conv2)
    table = shrink.plan(model).set_index("group")
    assert table.loc["stem", "removed"] == 1  # only channel 3 is dead in every writer
    small = shrink.shrink(model)
    assert small.stem[0].weight.shape[0] == 7 and small.stem[1].num_features == 7
    assert small.stages[0][0].conv2.weight.shape[0] == 7
    assert small.stages[0][0].conv1.weight.shape[1] == 7  # the readers lose it too
    assert small.stages[1][0].conv1.weight.shape[1] == 7
    assert small.stages[1][0].shortcut[0].weight.shape[1] == 7
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_coupled_channel_pruning_removes_the_same_channels_in_a_residual_group():
    fresh = build("resnet_small")
    rows = torch.cat(
        [
            fresh.stem[0].weight.detach().flatten(1),
            fresh.stages[0][0].conv2.weight.detach().flatten(1),
        ],
        dim=1,
    )
    # the group score is the L2 norm over both writers' rows of a channel
    expected = torch.argsort(rows.double().norm(dim=1), stable=True)[:4]
    model = build("resnet_small")
    new = shrink.prune_coupled(model, "channel", 0.5)
    gone_stem = ~new["stem.0.weight"].flatten(1).any(dim=1)
    gone_block = ~new["stages.0.0.conv2.weight"].flatten(1).any(dim=1)
    assert torch.equal(gone_stem, gone_block)
    assert sorted(torch.nonzero(gone_stem).flatten().tolist()) == sorted(expected.tolist())


@pytest.mark.parametrize("granularity", ["channel", "layer"])
def test_coupled_groups_are_ranked_by_the_one_selection(granularity, monkeypatch):
    """prune_coupled hands each part's group scores to selection.select, one call per part
    (a space, or the whole model for blocks), with the groups pruned before as its prior."""
    calls, select = [], sl.selection.select

    def spy(scores, sparsity, **kwargs):
        calls.append((scores["groups"].clone(), sparsity, kwargs["priors"]["groups"].clone()))
        return select(scores, sparsity, **kwargs)

    monkeypatch.setattr(sl.selection, "select", spy)
    model = build("resnet_small")
    shrink.prune_coupled(model, granularity, 0.5)
    parts = shrink._coupled_groups(model, shrink.structure(model), granularity, "writers")
    assert len(calls) == len(parts) and all(prior.all() for _, _, prior in calls)
    calls.clear()
    shrink.prune_coupled(model, granularity, 0.5)  # again: half of each part already gone
    assert all(int((~prior).sum()) == int(0.5 * len(prior) + 0.5) for _, _, prior in calls)


def test_heads_are_reshaped():
    model = build("tiny_transformer")
    new = shrink.prune_coupled(model, "head", 0.25)  # 2 of 8 heads, ranked across layers
    gone = {}
    for b in range(2):
        rows = new[f"blocks.{b}.attn.q.weight"].any(dim=1).reshape(4, 8).any(dim=1)
        gone[b] = int((~rows).sum())
    assert sum(gone.values()) == 2
    small = shrink.shrink(model)
    for b in range(2):
        attn = small.blocks[b].attn
        assert attn.n_heads == 4 - gone[b]
        assert attn.q.weight.shape == (8 * attn.n_heads, 32) == attn.v.weight.shape
        assert attn.out.weight.shape == (32, 8 * attn.n_heads)
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_head_with_only_its_value_rows_pruned_is_removed_and_its_bias_folded():
    model = build("tiny_transformer")
    keep = torch.ones(32, 32, dtype=torch.bool)
    keep[8:16] = False  # head 1 of block 0: v rows only
    sl.masks.attach(model, "blocks.0.attn.v.weight", keep)
    small = shrink.shrink(model)
    assert small.blocks[0].attn.n_heads == 3
    attn, old = small.blocks[0].attn, model.blocks[0].attn
    folded = old.out.bias.detach() + old.out.weight.detach()[:, 8:16] @ old.v.bias.detach()[8:16]
    assert torch.allclose(attn.out.bias.detach(), folded, atol=1e-6)
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_layer_removal_replaces_blocks_by_their_shortcut():
    model = build("resnet_small")
    shrink.prune_coupled(model, "layer", 0.34)  # round(0.34 * 3) = 1 block
    table = shrink.plan(model)
    branches = table[table.kind == "branch"]
    assert int(branches.removed.sum()) == 1
    small = shrink.shrink(model)
    removed = [p for p, m in small.named_modules() if type(m).__name__ == "_FixedBasicBlock"]
    assert len(removed) == 1
    assert not hasattr(small.get_submodule(removed[0]), "conv1")
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_layer_scores_are_per_element_means_over_the_block():
    model = build("resmlp")
    with torch.no_grad():
        for i, scale in enumerate([1.0, 0.01]):  # block 1 is much weaker
            model.blocks[i].fc1.weight.mul_(scale)
            model.blocks[i].fc2.weight.mul_(scale)
    new = shrink.prune_coupled(model, "layer", 0.5)
    assert new["blocks.0.fc1.weight"].all() and not new["blocks.1.fc2.weight"].any()
    small = shrink.shrink(model)
    assert type(small.blocks[1]).__name__ == "_FixedResidualMLPBlock"
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_transformer_block_loses_a_sublayer_and_stream_stays():
    model = build("tiny_transformer")
    for name in ("blocks.1.fc1.weight", "blocks.1.fc2.weight"):
        sl.masks.attach(model, name, torch.zeros_like(sl.masks.weight(model, name)))
    table = shrink.plan(model).set_index("group")
    assert table.loc["blocks.1 (mlp)", "removed"] == 1
    assert table.loc["stream", "removed"] == 0 and "LayerNorm" in table.loc["stream", "note"]
    small = shrink.shrink(model)
    assert not hasattr(small.blocks[1], "fc1") and hasattr(small.blocks[1], "attn")
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_a_layer_never_shrinks_to_zero_width():
    model = build("lenet300")
    sl.masks.attach(model, "fc2.weight", torch.zeros(100, 300))
    small = shrink.shrink(model)
    assert small.fc2.out_features == 1
    assert "zero width" in shrink.plan(model).set_index("group").loc["fc2", "note"]
    assert max_diff(model, small.eval(), batch(model)) <= 1e-5


def test_unstructured_zeros_stay_and_outputs_stay():
    model = build("lenet300")
    sl.prune(model, "magnitude", 0.8)
    zeros = {n: sl.masks.weight(model, n) == 0 for n in sl.pruning.default_targets(model)}
    small = shrink.shrink(model).eval()
    # nothing to remove: the same shapes, the zeros exactly where the masks put them
    assert n_params(small) == n_params(model)
    for name, zero in zeros.items():
        assert torch.equal(small.get_parameter(name) == 0, zero)
    assert sl.pruning.sparsity(small) == pytest.approx(0.8, abs=1e-3)
    assert max_diff(model, small, batch(model, n=64)) <= 1e-5


def test_sequential_chain_and_training_flag():
    net = nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(6 * 4, 5),
    ).train()
    shrink.prune_coupled(net, "channel", 0.5)
    x = torch.randn(4, 2, 8)
    small = shrink.shrink(net, x)
    assert small.training  # the mode follows the input model's
    assert small[0].out_channels == 3 and small[1].num_features == 3
    assert small[5].in_features == 12
    assert max_diff(net.eval(), small.eval(), x) <= 1e-5


def test_unsupported_models_fail_clearly():
    class Branching(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="could not trace Branching with torch.fx"):
        shrink.shrink(Branching(), torch.randn(2, 3))
    mixing = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layer '1' \\(LayerNorm\\)"):
        shrink.shrink(mixing, torch.randn(2, 3))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="'0' is a grouped convolution"):
        shrink.shrink(grouped, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="example_input"):
        shrink.shrink(nn.Sequential(nn.Linear(3, 2)))


def test_a_model_with_a_swapped_layer_is_traced_instead_of_refused():
    swapped = build("lenet300")
    swapped.fc2 = nn.Sequential(nn.Linear(300, 100))
    shrink.prune_coupled(swapped, "channel", 0.5)
    small = shrink.shrink(swapped)
    assert small.fc2[0].out_features == 50 and small.fc3.in_features == 50
    x = shrink.example_batch(swapped, batch=8)
    assert max_diff(swapped.eval(), small, x) <= 1e-5


def test_prune_coupled_rejects_bad_arguments():
    model = build("lenet300")
    with pytest.raises(ValueError, match="granularity must be"):
        shrink.prune_coupled(model, "kernel", 0.5)
    with pytest.raises(ValueError, match="no head groups"):
        shrink.prune_coupled(model, "head", 0.5)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        shrink.prune_coupled(model, "channel", 1.0)


def test_prune_coupled_continues_from_earlier_masks():
    model = build("lenet300")
    first = shrink.prune_coupled(model, "channel", 0.2)
    second = shrink.prune_coupled(model, "channel", 0.5)
    gone_first = ~first["fc1.weight"].any(dim=1)
    gone_second = ~second["fc1.weight"].any(dim=1)
    assert int(gone_second.sum()) == 150 and bool((gone_second | ~gone_first).all())


class ResidualCNN(nn.Module):
    """A model shrink has never seen: a residual add, a concatenation, a global pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(12, 3)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))  # stem and conv2 write the same channels
        z = torch.cat([x, self.side(x)], dim=1)  # fc reads 8 stream + 4 side channels
        return self.fc(z.mean((2, 3)))


def residual_cnn(seed=0):
    torch.manual_seed(seed)
    model = ResidualCNN().eval()
    for bn in (model.bn, model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return model


def test_tracing_finds_the_spaces_through_a_residual_add_and_a_concatenation():
    found = shrink.structure(residual_cnn(), torch.randn(2, 1, 8, 8))
    stream = found.space("stem")
    assert set(stream.writers) == {"stem", "conv2"} and set(stream.norms) == {"bn", "bn2"}
    assert {r for r, _ in stream.readers} == {"conv1", "side", "fc"}
    side = found.space("side")
    assert side.readers == [("fc", 1)] and side.offsets["fc"] == 8  # after the 8 of the stream
    assert found.space("fc").fixed == "the model's output"


@pytest.mark.parametrize("how", ["coupled", "per layer"])
def test_shrink_works_on_a_model_it_has_never_seen(how):
    model = residual_cnn()
    x = torch.randn(6, 1, 8, 8)
    if how == "coupled":
        shrink.prune_coupled(model, "channel", 0.5)
    else:  # masks on single layers: only channels no writer or reader needs can go
        layers = ["stem.weight", "conv1.weight", "conv2.weight", "side.weight"]
        sl.prune(model, "magnitude", 0.5, pattern="channel", budget="uniform", targets=layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the offset map of zero-padded constants
        small = shrink.shrink(model, x)
    removed = shrink.plan(model)["removed"].sum()
    assert removed > 0
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < before
    assert max_diff(model, small, x) <= 1e-5


def _shapes_after_removing(model, x, drop):
    """Parameter shapes after removing channels ``drop`` ({writer layer: indices}) with
    shrink, and with Torch-Pruning's dependency graph (Fang et al. 2023) on a copy."""
    tp = pytest.importorskip("torch_pruning")
    ours = copy.deepcopy(model)
    found = shrink.structure(ours, x)
    for layer, idx in drop.items():
        space = next(s for s in found.spaces if layer in s.writers)
        for w in space.writers:
            keep = torch.ones_like(ours.get_submodule(w).weight, dtype=torch.bool)
            keep[idx] = False
            masks.attach(ours, f"{w}.weight", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = shrink.shrink(ours, x)
    theirs = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(theirs, example_inputs=x)
    for layer, idx in drop.items():
        module = theirs.get_submodule(layer)
        prune = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else None
        group = graph.get_pruning_group(module, prune or tp.prune_conv_out_channels, idxs=idx)
        group.prune()
    shapes = [
        {k: tuple(v.shape) for k, v in m.state_dict().items() if "offset" not in k}
        for m in (small, theirs)
    ]
    return shapes


@pytest.mark.parametrize(
    ("name", "drop"),
    [
        ("residual_cnn", {"stem": [1, 5], "conv1": [0, 2, 7], "side": [3]}),
        ("lenet5", {"conv1": [0, 3], "fc1": [5, 6, 7]}),
        ("resnet_small", {"stem.0": [0, 1], "stages.0.0.conv1": [2]}),
    ],
)
def test_shrink_removes_the_same_coupled_channels_as_torch_pruning(name, drop):
    model = residual_cnn() if name == "residual_cnn" else build(name).eval()
    x = shrink.example_batch(model, batch=4)
    ours, theirs = _shapes_after_removing(model, x, drop)
    # shrink may give a bias-free reader a bias, to fold in what removed channels sent
    assert all(k.endswith(".bias") for k in ours.keys() - theirs.keys())
    assert theirs.keys() <= ours.keys()
    assert {k: ours[k] for k in theirs} == theirs


def test_coupled_pruning_is_reachable_from_prune_and_matches_prune_coupled():
    a, b = build("resnet_small"), build("resnet_small")
    sl.prune(a, "magnitude", 0.5, pattern="channel", coupled=True)
    shrink.prune_coupled(b, "channel", 0.5)
    for n, keep in sl.masks.masks(b).items():
        assert torch.equal(sl.masks.get_mask(a, n), keep), n
    per_layer = build("resnet_small")
    sl.prune(per_layer, "magnitude", 0.5, pattern="channel", budget="uniform")
    coupled_left = sum(p.numel() for p in shrink.shrink(a).parameters())
    per_layer_left = sum(p.numel() for p in shrink.shrink(per_layer).parameters())
    assert coupled_left < per_layer_left  # residual streams go only when coupled
    with pytest.raises(ValueError, match="budget cannot apply"):
        sl.prune(build("resnet_small"), "magnitude", 0.5, pattern="channel", coupled=True,
                 budget="uniform")  # fmt: skip
    with pytest.raises(ValueError, match="channels, heads or layers"):
        sl.prune(build("resnet_small"), "magnitude", 0.5, pattern="2:4", coupled=True)


def test_the_plan_names_the_removed_channels():
    model = residual_cnn()
    keep = torch.ones_like(model.conv1.weight, dtype=torch.bool)
    keep[[2, 5]] = False
    sl.masks.attach(model, "conv1.weight", keep)
    row = shrink.plan(model).set_index("group").loc["conv1"]
    assert row["indices"] == [2, 5] and row["removed"] == 2


def test_group_members_all_scores_a_channel_on_its_rows_columns_and_batchnorm_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[0].weight[0] *= 0.01  # channel 0: the weakest rows, the strongest column
        model[3].weight[:, 0] = 50.0
    w0, gamma, w3 = (
        t.detach().double() for t in (model[0].weight, model[1].weight, model[3].weight)
    )
    # by hand: the L2 norm of every element of the group
    score = (w0.pow(2).sum(1) + gamma.pow(2) + w3.pow(2).sum(0)).sqrt()
    expected = sorted(torch.argsort(score, stable=True)[:4].tolist())
    writers = copy.deepcopy(model)
    new = shrink.prune_coupled(model, "channel", 0.5, group_members="all")
    assert sorted(torch.nonzero(~new["0.weight"].any(1)).flatten().tolist()) == expected
    assert 0 not in expected  # its column saves it
    assert torch.equal(~new["3.weight"].any(0), ~new["0.weight"].any(1))  # readers go too
    assert masks.get_mask(model, "1.weight") is None  # the scale scores, it is not masked
    by_rows = shrink.prune_coupled(writers, "channel", 0.5)
    assert not bool(by_rows["0.weight"][0].any())  # scored on its rows alone, it goes
    with pytest.raises(ValueError, match="group_members must be one of"):
        shrink.prune_coupled(copy.deepcopy(writers), "channel", 0.5, group_members="rows")


def test_a_channel_prune_that_splits_a_residual_stream_warns_and_counts_the_split():
    model = build("resnet_small")
    with pytest.warns(UserWarning, match="prune with coupled=True") as caught:
        sl.prune(model, "magnitude", 0.3, pattern="channel", budget="uniform")
    split = shrink.uncoupled_channels(model)
    found = shrink.structure(model)
    for s in found.spaces:  # independently: rows zero in some writers but not all
        if len(s.writers) < 2:
            continue
        zero = torch.stack(
            [(model.get_submodule(w).weight == 0).flatten(1).all(1) for w in s.writers]
        )
        n = int((zero.any(0) & ~zero.all(0)).sum())
        assert split.get(s.name, 0) == n, s.name
        if n:
            assert f"{s.name!r} ({n})" in str(caught[-1].message)
    assert split
    coupled = build("resnet_small")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.prune(coupled, "magnitude", 0.3, pattern="channel", coupled=True)
        sl.prune(build("lenet5"), "magnitude", 0.3, pattern="channel", budget="uniform")
    assert shrink.uncoupled_channels(coupled) == {}
