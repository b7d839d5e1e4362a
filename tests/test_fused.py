"""The fused sparse chain: tracing a chain, one compiled call, and its place in export."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accel, fused, models, shrink

needs_compiler = pytest.mark.skipif(fused.library() is None, reason="no C compiler here")


def lenet300(sparsity=0.95, seed=0):
    torch.manual_seed(seed)
    model = models.build("lenet300", input_shape=(784,), n_classes=10)
    sl.prune(model, "magnitude", sparsity, budget="uniform")
    return sl.masks.squash(model).eval()


def chain_module(model):
    chain = fused.chain_of(model)
    layers = [(model.get_submodule(n), relu) for n, relu in chain.layers]
    return fused.FusedSparseChain(layers, model, flatten_input=chain.flatten_input).eval()


def test_chain_of_reads_mlps_and_refuses_everything_else():
    assert fused.chain_of(lenet300()) == ([("fc1", True), ("fc2", True), ("fc3", False)], True)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert fused.chain_of(seq) == ([("1", True), ("3", False)], True)
    plain = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert fused.chain_of(plain) == ([("0", True), ("2", False)], False)
    offset = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), shrink.OffsetLinear(4, 2))
    refused = {
        "conv": models.build("lenet5", input_shape=(1, 28, 28), n_classes=10),
        "residual": models.build("resmlp", input_shape=(16,), n_classes=10),
        "sigmoid": nn.Sequential(nn.Linear(8, 4), nn.Sigmoid(), nn.Linear(4, 2)),
        "two relus": nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)),
        "flatten inside": nn.Sequential(nn.Linear(8, 4), nn.Flatten(), nn.Linear(4, 2)),
        "a layer that adds an offset": offset,
    }
    for name, model in refused.items():
        assert fused.chain_of(model) is None, name


@needs_compiler
def test_the_compiled_chain_equals_the_reference_loop_and_the_model():
    model = lenet300()
    chain = chain_module(model)
    for seed in range(3):
        x = torch.randn(1, 784, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out = chain(x)
            # independent: scipy's CSR product in float64, and the dense model itself
            torch.testing.assert_close(out, fused.reference_forward(chain, x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    assert chain.nnz == sum(
        int(m.weight.count_nonzero()) for m in (model.fc1, model.fc2, model.fc3)
    )


def test_other_batches_and_no_compiler_run_the_fallback(monkeypatch):
    model = lenet300()
    layers = [(model.get_submodule(n), relu) for n, relu in fused.chain_of(model).layers]
    chain = fused.FusedSparseChain(layers, copy.deepcopy(model), flatten_input=True).eval()
    calls = []
    monkeypatch.setattr(
        chain.fallback, "forward", lambda x: calls.append(tuple(x.shape)) or model(x)
    )
    compiled = fused.library() is not None
    with torch.no_grad():
        chain(torch.randn(4, 784))
        chain(torch.randn(1, 784))  # the compiled call, where there is a compiler
        monkeypatch.setitem(fused._LIBRARY, "csr_chain", None)
        chain(torch.randn(1, 784))
    assert calls == [(4, 784)] + ([] if compiled else [(1, 784)]) + [(1, 784)]


@needs_compiler
def test_changed_and_replaced_buffers_are_seen():
    chain = chain_module(lenet300())
    x = torch.randn(1, 784)
    with torch.no_grad():
        chain(x)
        chain.values2.zero_()  # in place: same memory, the pointers stay right
        torch.testing.assert_close(chain(x), chain.bias2[None, :].expand(1, 10))
        chain.bias2 = torch.ones(10)  # replaced: the struct is rebuilt
        torch.testing.assert_close(chain(x), torch.ones(1, 10))


@needs_compiler
def test_the_chain_saves_copies_and_pickles():
    chain = chain_module(lenet300())
    x = torch.randn(1, 784)
    with torch.no_grad():
        expected = chain(x)
        buffer = io.BytesIO()
        accel.save(chain, buffer)
        buffer.seek(0)
        copies = [copy.deepcopy(chain), pickle.loads(pickle.dumps(chain)), accel.load(buffer)]
        for clone in copies:
            assert isinstance(clone, fused.FusedSparseChain)
            torch.testing.assert_close(clone(x), expected)
        fresh = chain_module(lenet300(seed=1))
        fresh.load_state_dict(chain.state_dict())
        torch.testing.assert_close(fresh(x), expected)


@needs_compiler
def test_export_keeps_the_chain_only_as_a_measured_choice_with_the_same_outputs():
    model = lenet300(0.95)
    x = torch.randn(1, 784)
    exported = accel.export(model, x, repeats=3, budget_s=1e-3)
    batch = torch.randn(16, 784)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(exported(batch), model(batch), atol=1e-5, rtol=1e-5)
    if isinstance(exported, fused.FusedSparseChain):
        assert exported.chain_speedup >= 1.0  # kept only when it measured faster
        assert [c.name for c in exported.export_plan] == ["fc1", "fc2", "fc3"]
    # a batch larger than one is never fused, and neither is a model that is not a chain
    assert not isinstance(
        accel.export(model, batch, repeats=3, budget_s=1e-3), fused.FusedSparseChain
    )


@needs_compiler
def test_unreadable_buffers_fall_back_and_damaged_ones_are_refused():
    """What the kernel reads is checked whenever a buffer's memory changes: other dtypes
    use the fallback, a damaged CSR array raises instead of reading out of bounds."""
    model = lenet300()
    x = torch.randn(1, 784)
    with torch.no_grad():
        expected = model(x)
        for convert in (lambda c: c.double(), lambda c: c.half()):
            chain = convert(chain_module(lenet300()))
            chain.fallback = model
            torch.testing.assert_close(chain(x), expected)  # the fallback ran
        chain = chain_module(lenet300())
        chain.indices0.fill_(1 << 30)  # in place: the same memory, but checked once
        chain._key = None
        with pytest.raises(ValueError, match="not a valid 300x784 CSR matrix"):
            chain(x)
        buffer = io.BytesIO()
        damaged = chain_module(lenet300())
        damaged.indptr1[-1] += 5
        accel.save(damaged, buffer)
        buffer.seek(0)
        with pytest.raises(ValueError, match="may be damaged"):
            accel.load(buffer)(x)


@needs_compiler
def test_threads_sharing_a_chain_get_their_own_work_space():
    import concurrent.futures

    chain = chain_module(lenet300())
    inputs = [torch.randn(1, 784, generator=torch.Generator().manual_seed(i)) for i in range(64)]
    with torch.no_grad():
        expected = [chain(x) for x in inputs]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(chain, inputs))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_shapes_the_model_does_not_flatten_go_to_the_fallback():
    plain = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    chain = chain_module(plain)
    with torch.no_grad():
        assert chain(torch.randn(1, 1, 8)).shape == (1, 1, 2)  # as the model gives it
        assert chain(torch.randn(1, 8)).shape == (1, 2)
    with pytest.raises(ValueError, match="do not connect"):
        fused.FusedSparseChain([(nn.Linear(8, 4), True), (nn.Linear(5, 2), False)], plain)
