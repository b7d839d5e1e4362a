"""The compiled network: translation by tracing, one compiled call, and its place in export."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accel, fused, fused_net, inference, models, shrink

needs_compiler = pytest.mark.skipif(fused.library() is None, reason="no C compiler here")

BUNDLED = [
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (1, 8, 8), {}),  # its second convolution padded too
    ("resnet_small", (1, 28, 28), {}),
    ("cnn1d", (1, 40), {}),
    ("lenet300", (784,), {}),
]


def folded(model: nn.Module) -> nn.Module:
    model = model.eval()
    inference.fold_batchnorm(model)
    return model


def bundled(name, shape, options, *, shrunk=False, seed=0):
    torch.manual_seed(seed)
    model = models.build(name, input_shape=shape, n_classes=10, **options).eval()
    for m in model.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    if shrunk:
        shrink.prune_coupled(model, "channel", 0.5)
        model = shrink.shrink(model, torch.randn(2, *shape)).eval()
    return folded(model)


def compiled(model, x, max_batch=None):
    program = fused_net.program_of(model, x)
    assert program is not None
    net = fused_net.CompiledNet(program, model, max_batch=max_batch or x.shape[0]).eval()
    assert net._prepared() is not None  # the compiled call, not the fallback, will run
    return net


#: This CPU's flags and lanes, and plain SSE with 4 lanes (what a CPU without AVX2 gets)
TARGETS = [fused_net.target(), (("-O3", "-Wno-psabi"), 4)]


@needs_compiler
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t[1]}lanes")
@pytest.mark.parametrize("shrunk", [False, True])
@pytest.mark.parametrize("name,shape,options", BUNDLED)
def test_bundled_models_compile_to_their_float64_outputs(
    name, shape, options, shrunk, target, monkeypatch
):
    """Every bundled CNN and MLP, dense and shrunk, translates; its compiled outputs equal
    the same model run by torch in float64 (an independent computation) at batch 1, at 5
    (one by one), and at 13 (the batched loops, then the examples left over one by one)."""
    monkeypatch.setattr(fused_net, "target", lambda: target)
    model = bundled(name, shape, options, shrunk=shrunk)
    x = torch.randn(13, *shape)
    net = compiled(model, x)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).float()
        for batch in (x[:1], x[:5], x):
            torch.testing.assert_close(net(batch), expected[: len(batch)], atol=1e-5, rtol=1e-5)
    if name == "resnet_small":  # buffers whose lives do not overlap share the arena
        program = fused_net.program_of(model, x)
        assert program.arena < sum(int(torch.Size(r).numel()) for r in _sizes(model, x))


def _sizes(model, x):
    """The per-example shapes of every activation of ``model`` (what an arena without reuse
    would hold)."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, out: shapes.append(out.shape[1:]))
             for m in model.modules() if not list(m.children())]  # fmt: skip
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return shapes


@needs_compiler
def test_a_convolution_by_hand():
    """A 3x3 kernel of ones with zero padding 1 over an image of ones sums the pixels each
    output sees: 4 in the corners, 6 on the edges, 9 inside (plus the bias); a stride of 2
    keeps every other one."""
    for stride, expected_rows in ((1, [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]),
                                  (2, [[4, 6], [6, 9]])):  # fmt: skip
        conv = nn.Conv2d(1, 1, 3, stride=stride, padding=1)
        with torch.no_grad():
            conv.weight.fill_(1.0)
            conv.bias.fill_(0.5)
        net = compiled(nn.Sequential(conv).eval(), torch.ones(1, 1, 4, 4))
        with torch.no_grad():
            out = net(torch.ones(1, 1, 4, 4))
        assert out.tolist() == [[[[v + 0.5 for v in row] for row in expected_rows]]]


@needs_compiler
def test_pooling_sums_residuals_and_shared_outputs_match_torch():
    """Max-pooling with windows cut at the border (ceil mode, odd sizes), a NaN that must
    propagate, global average pooling, and a ReLU whose input is read again (it must not be
    applied in place)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            h = self.conv(x)
            y = F.relu(h) + h  # h read after the ReLU
            y = self.pool(y)
            return self.fc(torch.relu(y).mean((2, 3)))

    model = Net().eval()
    for batch in (3, 11):  # one by one; batched, then one by one
        x = torch.randn(batch, 2, 7, 9)
        net = compiled(model, x)
        with torch.no_grad():
            torch.testing.assert_close(net(x), model(x), atol=1e-6, rtol=1e-5)
            x[1, 0, 3, 4] = float("nan")
            out, expected = net(x), model(x)
        assert torch.equal(out.isnan(), expected.isnan()) and bool(out[1].isnan().any())
        torch.testing.assert_close(out[0], expected[0], atol=1e-6, rtol=1e-5)


class _InPlace(nn.Module):
    """ReLUs that overwrite their input while another node still reads it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        z = F.relu(y, inplace=True)  # y is z from here on
        w = self.conv(x) + y  # reads the overwritten y
        v = torch.relu_(w)
        return self.relu(v).relu() + z + y


@needs_compiler
def test_in_place_relus_are_seen_by_every_later_reader():
    model = _InPlace().eval()
    x = torch.randn(9, 2, 6, 6)
    net = compiled(model, x)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x.clone()), atol=1e-6, rtol=1e-5)


class _TwoInputs(nn.Module):
    def forward(self, a, b):
        return a + b


class _BroadcastAdd(nn.Module):
    def forward(self, x):
        return x + x.mean(1, keepdim=True)


class _MixesTheBatch(nn.Module):
    """At batch 1 its reshape looks like a flatten; at any other batch it joins examples."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3)

    def forward(self, x):
        return self.conv(x).view(1, -1)


class _ReluOnItsInput(nn.Module):
    """Changes its caller's tensor in torch; a program works on a copy of it."""

    def forward(self, x):
        return torch.relu_(x).sum(1)


def _hooked():
    model = nn.Sequential(nn.Conv2d(4, 2, 3), nn.ReLU())
    model[0].register_forward_hook(lambda module, args, out: out * 2)
    return model


def _offset_linear():
    layer = shrink.OffsetLinear(4, 4)
    layer.register_buffer("offset", torch.ones(4))
    return layer


def test_what_the_program_does_not_run_is_refused():
    x4, x2 = torch.randn(1, 4, 8, 8), torch.randn(1, 4)
    refused = {
        "grouped convolution": (nn.Conv2d(4, 4, 3, groups=2), x4),
        "dilated convolution": (nn.Conv2d(4, 4, 3, dilation=2), x4),
        "reflect padding": (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), x4),
        "an unfolded norm": (nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)), x4),
        "a padded max-pool": (nn.MaxPool2d(3, padding=1), x4),
        "a sigmoid": (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()), x2),
        "a broadcast addition": (_BroadcastAdd(), x4),
        "an offset layer": (_offset_linear(), x2),
        "double inputs": (nn.Linear(4, 4).double(), x2.double()),
        "two inputs": (_TwoInputs(), x2),
        "a reshape across the batch": (_MixesTheBatch(), x4),
        "a forward hook": (_hooked(), x4),
        "an in-place ReLU of the input": (_ReluOnItsInput(), x2),
        "an in-place ReLU module on the input": (nn.Sequential(nn.ReLU(inplace=True)), x2),
        "nothing to compute": (nn.Sequential(nn.Flatten(), nn.Identity()), x4),
        "an input without its batch": (nn.Sequential(nn.Conv2d(4, 2, 3)), x4[0]),
    }
    for what, (module, x) in refused.items():
        assert fused_net.program_of(module.eval(), x) is None, what


@needs_compiler
def test_other_batches_dtypes_training_and_no_compiler_run_the_fallback(monkeypatch):
    model = bundled("lenet5", (1, 28, 28), {})
    with torch.no_grad():  # float64 buffers and inputs: the fallback, in float64
        x = torch.randn(1, 1, 28, 28)
        double = compiled(copy.deepcopy(model), x).double()
        torch.testing.assert_close(double(x.double()), copy.deepcopy(model).double()(x.double()))
    net = compiled(copy.deepcopy(model), torch.randn(1, 1, 28, 28))
    calls = []
    monkeypatch.setattr(net.fallback, "forward", lambda x: calls.append(len(x)) or model(x))
    with torch.no_grad():
        net(torch.randn(1, 1, 28, 28))  # compiled
        net(torch.randn(3, 1, 28, 28))  # larger than max_batch
        net(torch.randn(1, 1, 28, 56)[..., ::2])  # compiled: a strided input is copied
        net.train()(torch.randn(1, 1, 28, 28))  # training: dropout and norms would differ
        net.eval()
        monkeypatch.setattr(fused_net, "library", lambda source: None)
        net._key = None
        net(torch.randn(1, 1, 28, 28))
    net(torch.randn(1, 1, 28, 28, requires_grad=True))  # gradients: torch's autograd
    assert calls == [3, 1, 1, 1]


@needs_compiler
def test_the_network_saves_copies_pickles_and_refuses_damage():
    model = bundled("resnet_small", (1, 28, 28), {}, shrunk=True)
    x = torch.randn(1, 1, 28, 28)
    net = compiled(model, x)
    with torch.no_grad():
        expected = net(x)
        buffer = io.BytesIO()
        accel.save(net, buffer)
        buffer.seek(0)
        for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net)), accel.load(buffer)):
            assert isinstance(clone, fused_net.CompiledNet)
            torch.testing.assert_close(clone(x), expected)
        fresh = compiled(bundled("resnet_small", (1, 28, 28), {}, shrunk=True, seed=1), x)
        fresh.load_state_dict(net.state_dict())
        torch.testing.assert_close(fresh(x), expected)
        net.params = torch.zeros_like(net.params)  # replaced: the pointers are rebuilt
        assert not torch.allclose(net(x), expected)
        for damage in ("offset", "param size"):
            broken = copy.deepcopy(net)
            if damage == "offset":
                broken.ops[-1, 3] = broken.arena  # the last row writes past the arena
            else:
                broken.params = broken.params[:-1].clone()
            for _ in range(2):  # on every call, not only the first
                with pytest.raises(ValueError, match="may be damaged"):
                    broken(x)
        net(x)
        net.ops[-1, 3] = net.arena  # in place, after a call: the same memory, checked again
        with pytest.raises(ValueError, match="may be damaged"):
            net(x)


@needs_compiler
def test_threads_building_the_same_code_all_get_it():
    """The first call of a new program compiles it; a second thread arriving meanwhile waits
    for that build instead of running the fallback from then on."""
    import concurrent.futures
    import threading

    source = fused_net.KERNELS.replace("#include", f"/* {torch.randn(1).item()} */\n#include", 1)
    source = "#define LANES 4\n" + source + "void run_net(void) {}\n"
    barrier = threading.Barrier(4)

    def build(_):
        barrier.wait()
        return fused.compiled("test-threads", source, ("-O1", "-Wno-psabi"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        libs = list(pool.map(build, range(4)))
    fused._LIBRARY.pop("test-threads", None)
    assert all(lib is not None for lib in libs) and len({id(lib) for lib in libs}) == 1


@needs_compiler
@pytest.mark.parametrize("batch", [1, 8])
def test_export_keeps_the_compiled_net_only_as_a_measured_choice(batch):
    """Where export keeps the compiled form, it measured faster, it has the per-layer plan,
    it runs only up to the measured batch, and outputs stay the masked model's."""
    torch.manual_seed(0)
    model = models.build("lenet5", input_shape=(1, 28, 28), n_classes=10).eval()
    shrink.prune_coupled(model, "channel", 0.5)
    x = torch.randn(batch, 1, 28, 28)
    exported = accel.export(model, x, kernels=(), repeats=3, budget_s=1e-3)
    larger = torch.randn(2 * batch + 1, 1, 28, 28)
    with torch.no_grad():
        for inputs in (x, larger):
            torch.testing.assert_close(exported(inputs), model(inputs), atol=1e-5, rtol=1e-5)
    if isinstance(exported, fused_net.CompiledNet):
        assert exported.compiled_speedup >= 1.0 and exported.max_batch == batch
        assert [c.name for c in exported.export_plan] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    # a forced sparse kernel is what was asked for: never replaced by the compiled network
    sparse = models.build("lenet300", input_shape=(784,), n_classes=10).eval()
    sl.prune(sparse, "magnitude", 0.95)
    forced = accel.export(sparse, torch.randn(1, 784), dispatch="torch_csr", repeats=2)
    assert not isinstance(forced, fused_net.CompiledNet)
