"""Gradient compressors: local rules against hand computations, and real 2-process DDP.

The DDP part starts two worker processes once (gloo on 127.0.0.1, a free port) and runs
every scenario in them; the tests then compare what the workers saw with references
computed here in NumPy, independently of the library code.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparsity_lab import registry
from sparsity_lab.ephemeral import ddp
from sparsity_lab.ephemeral import gradients as G

N = 20  # entries of the test gradient


# ----------------------------------------------------------------------------- local rules


def test_every_method_is_registered():
    assert set(G.METHODS) <= set(registry.available("ephemeral"))
    for name in G.METHODS:
        assert issubclass(registry.get(name), G.Compressor)


def test_topk_selects_largest_and_keeps_the_residual():
    g = torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05, 0.9, 0.0, 0.3, -0.4, 0.5])
    comp = G.TopK(sparsity=0.8)  # k = 2 of 10
    p = comp.compress(g)
    assert sorted(p.indices.tolist()) == [1, 3]
    expected_residual = g.clone()
    expected_residual[[1, 3]] = 0
    assert torch.equal(comp.residual(), expected_residual)
    # step 2: the same gradient again, selected from g + r (2g except at entries 1 and 3)
    p2 = comp.compress(g)
    acc = g + expected_residual
    order = np.argsort(-np.abs(acc.numpy()), kind="stable")[:2]
    assert sorted(p2.indices.tolist()) == sorted(order.tolist())
    assert torch.allclose(p2.values, acc[p2.indices])


def test_topk_without_error_feedback_forgets():
    g = torch.arange(10.0)
    comp = G.TopK(sparsity=0.8, error_feedback=False)
    comp.compress(g)
    assert sorted(comp.compress(g).indices.tolist()) == [8, 9]
    assert comp._state.get("residual") is None


def test_keep_count_never_exceeds_the_density():
    for n in (7, 100, 266610):
        for s in (0.9, 0.99, 0.999):
            k = G._keep_count(1 - s, n)
            assert 1 <= k <= max(1, (1 - s) * n + 1e-9)


def test_randomk_is_unbiased_in_expectation():
    g = torch.tensor([1.0, -2.0, 0.5, 4.0, -1.5, 3.0, 0.25, -0.75])
    comp = G.RandomK(sparsity=0.75, error_feedback=False)  # k = 2 of 8, scaled by 4
    draws = 20000
    total = torch.zeros_like(g)
    hits = torch.zeros_like(g)
    for _ in range(draws):
        p = comp.compress(g)
        total.index_add_(0, p.indices, p.values)
        hits[p.indices] += 1
    # each index is drawn with probability k/n = 1/4; the estimate's std per entry is
    # |g| sqrt(n/k - 1) / sqrt(draws)
    assert torch.allclose(hits / draws, torch.full_like(g, 0.25), atol=0.02)
    std = g.abs() * math.sqrt(3) / math.sqrt(draws)
    assert ((total / draws - g).abs() <= 5 * std).all()


def test_randomk_workers_with_the_same_seed_pick_the_same_indices():
    a, b = G.RandomK(0.9, seed=3), G.RandomK(0.9, seed=3)
    for _ in range(5):
        ia = a.compress(torch.randn(50)).indices
        ib = b.compress(torch.randn(50)).indices
        assert torch.equal(ia, ib)


def test_threshold_sends_quantised_signs_and_keeps_the_rest():
    g = torch.tensor([0.3, -0.05, -0.25, 0.1])
    comp = G.Threshold(threshold=0.2)
    p = comp.compress(g)
    assert p.indices.tolist() == [0, 2]
    assert p.values.tolist() == pytest.approx([0.2, -0.2])
    assert comp.encode(p.values).dtype == torch.int8
    assert torch.equal(comp.decode(comp.encode(p.values)), p.values)
    r = comp.residual()
    assert torch.allclose(r, torch.tensor([0.1, -0.05, -0.05, 0.1]))


def test_gradient_dropping_threshold_from_a_full_sample_is_exact():
    g = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    comp = G.GradientDropping(0.99, sample_fraction=1.0, min_sample=2000)
    # sampling with replacement: the count is close to, not exactly, 1% of the entries
    sent = comp.compress(g).indices.numel()
    assert 5 <= sent <= 60
    exact = G.GradientDropping(0.99, sample_fraction=1.0, min_sample=10)
    t = exact.threshold(g)
    assert (g.abs() >= t).sum() >= 1


def p2_dense(payload, n=4):
    return torch.zeros(n).index_add_(0, payload.indices, payload.values)


def test_dgc_momentum_correction_and_factor_masking_by_hand():
    m = 0.5
    comp = G.DGC(sparsity=0.5, momentum=m)  # k = 2 of 4
    g1 = torch.tensor([1.0, 0.1, -2.0, 0.2])
    p1 = comp.compress(g1)
    # u1 = g1, v1 = u1; send the two largest |v|: entries 0 and 2
    assert sorted(p1.indices.tolist()) == [0, 2]
    u1 = torch.tensor([0.0, 0.1, 0.0, 0.2])  # momentum factor masking zeroed 0 and 2
    v1 = torch.tensor([0.0, 0.1, 0.0, 0.2])
    assert torch.allclose(comp.state("momentum"), u1)
    assert torch.allclose(comp.residual(), v1)
    g2 = torch.tensor([0.0, 0.3, 0.0, -0.1])
    p2 = comp.compress(g2)
    u2 = m * u1 + g2  # [0, 0.35, 0, 0]
    v2 = v1 + u2  # [0, 0.45, 0, 0.2]
    assert torch.allclose(p2.values.sort().values, torch.tensor([0.2, 0.45]))
    assert torch.allclose(comp.state("momentum"), torch.zeros(4))
    assert torch.allclose(comp.residual(), v2 - p2_dense(p2), atol=1e-6)  # all of v2 was sent


def test_dgc_clipping_scales_the_local_gradient():
    comp = G.DGC(sparsity=0.0, momentum=0.0, clip_norm=1.0)  # one process: limit 1
    p = comp.compress(torch.tensor([3.0, 4.0]))
    assert torch.allclose(p.values.sort().values, torch.tensor([0.6, 0.8]))


def test_dgc_warmup_follows_the_paper():
    stages = [G.dgc_warmup_sparsity(s, 0.999, 400) for s in (0, 100, 200, 300, 400)]
    assert stages == pytest.approx([0.75, 0.9375, 0.984375, 0.99609375, 0.999])
    assert G.dgc_warmup_sparsity(0, 0.5, 100) == 0.5  # never sparser than the target
    assert G.dgc_warmup_sparsity(10, 0.99, 0) == 0.99


def test_adacomp_selects_per_bin_by_hand():
    comp = G.AdaComp(bin_size=3)
    g = torch.tensor([1.0, 0.9, 0.1, 0.05, -0.2, 0.15])
    # bin 1: gmax 1.0; h = 2g: |h| = 2, 1.8, 0.2 -> entries 0 and 1 pass
    # bin 2: gmax 0.2; |h| = 0.1, 0.4, 0.3 -> entries 4 and 5 pass
    p = comp.compress(g)
    assert p.indices.tolist() == [0, 1, 4, 5]
    assert torch.equal(p.values, g[[0, 1, 4, 5]])


def test_bad_options_are_explained():
    with pytest.raises(ValueError, match="sparsity must be in"):
        G.TopK(1.0)
    with pytest.raises(ValueError, match="threshold must be positive"):
        G.Threshold(0.0)
    with pytest.raises(ValueError, match="bin_size"):
        G.AdaComp(0)
    with pytest.raises(ValueError, match="not a gradient compressor"):
        G.make_compressor("sparsemax")
    with pytest.raises(KeyError, match="Did you mean"):
        G.make_compressor("topkk")
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        G.register_hook(nn.Linear(2, 2), "topk")


# ------------------------------------------------------------------- real DDP (2 workers)


def _inputs(rank: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(1, N, generator=gen)


def _run(rank, method, steps, options, record_residual=False):
    torch.manual_seed(0)
    model = nn.Linear(N, 1, bias=False)
    net = nn.parallel.DistributedDataParallel(model)
    comp = G.register_hook(net, method, **options)
    grads, residuals = [], []
    for step in range(steps):
        net.zero_grad()
        x = _inputs(rank, step % 3)
        net(x).sum().backward()  # the local gradient is x itself
        grads.append(model.weight.grad.flatten().clone())
        if record_residual:
            residuals.append(comp.residual(model.weight).flatten().clone())
    return {"grads": grads, "residuals": residuals, **comp.stats()}


def _scenarios(rank: int, world_size: int) -> dict:
    out = {
        "dense": _run(rank, "dense", 2, {}),
        "topk_ef": _run(rank, "topk", 3, {"sparsity": 0.9}, record_residual=True),
        "topk_no_ef": _run(rank, "topk", 2, {"sparsity": 0.9, "error_feedback": False}),
        "threshold": _run(rank, "threshold", 2, {"threshold": 0.8}),
        "adacomp": _run(rank, "adacomp", 2, {"bin_size": 5}),
        "dgc": _run(rank, "dgc", 2, {"sparsity": 0.9, "momentum": 0.5}),
    }
    # randomk: the same two local gradients every step, many steps, unbiased scaling
    torch.manual_seed(0)
    model = nn.Linear(N, 1, bias=False)
    net = nn.parallel.DistributedDataParallel(model)
    comp = G.register_hook(net, "randomk", sparsity=0.75, error_feedback=False, seed=5)
    total = torch.zeros(N)
    steps = 400
    for _ in range(steps):
        net.zero_grad()
        net(_inputs(rank, 0)).sum().backward()
        total += model.weight.grad.flatten()
    out["randomk_mean"] = total / steps
    out["randomk_bytes"] = comp.bytes_sent
    out["randomk_steps"] = comp.steps
    return out


@pytest.fixture(scope="module")
def ddp_results():
    return ddp.launch(_scenarios, world_size=2, timeout=120)


def _x(rank, step):
    return _inputs(rank, step % 3).flatten().numpy().astype(np.float64)


def _topk_ref(a, k):
    idx = np.argsort(-np.abs(a), kind="stable")[:k]
    sent = np.zeros_like(a)
    sent[idx] = a[idx]
    return sent


def test_ddp_dense_baseline_is_the_mean_gradient(ddp_results):
    for step in range(2):
        expected = (_x(0, step) + _x(1, step)) / 2
        for rank in range(2):
            got = ddp_results[rank]["dense"]["grads"][step]
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert ddp_results[0]["dense"]["bytes_sent"] == 2 * N * 4


def test_ddp_topk_averages_sparse_gradients_and_carries_the_residual(ddp_results):
    k = 2  # 10% of 20
    res = [np.zeros(N), np.zeros(N)]
    for step in range(3):
        sent = []
        for rank in range(2):
            acc = _x(rank, step) + res[rank]
            s = _topk_ref(acc, k)
            res[rank] = acc - s
            sent.append(s)
        expected = (sent[0] + sent[1]) / 2
        for rank in range(2):
            run = ddp_results[rank]["topk_ef"]
            np.testing.assert_allclose(run["grads"][step], expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(run["residuals"][step], res[rank], rtol=1e-5, atol=1e-6)
    # measured bytes: per step k int32 indices + k float32 values, one bucket
    for rank in range(2):
        run = ddp_results[rank]["topk_ef"]
        assert run["bytes_sent"] == 3 * k * (4 + 4)
        assert run["dense_bytes"] == 3 * N * 4
        assert run["steps"] == 3


def test_ddp_topk_without_error_feedback(ddp_results):
    for step in range(2):
        expected = (_topk_ref(_x(0, step), 2) + _topk_ref(_x(1, step), 2)) / 2
        got = ddp_results[0]["topk_no_ef"]["grads"][step]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ddp_threshold_pads_variable_counts_and_counts_the_bytes(ddp_results):
    tau = 0.8
    res = [np.zeros(N), np.zeros(N)]
    sent_bytes = [0, 0]
    for step in range(2):
        sent, counts = [], []
        for rank in range(2):
            acc = _x(rank, step) + res[rank]
            s = np.where(np.abs(acc) >= tau, tau * np.sign(acc), 0.0)
            res[rank] = acc - s
            sent.append(s)
            counts.append(int((np.abs(acc) >= tau).sum()))
        largest = max(1, max(counts))
        for rank in range(2):  # count (int32) + padded indices (int32) + signs (int8)
            sent_bytes[rank] += 4 + largest * 4 + largest * 1
        expected = (sent[0] + sent[1]) / 2
        for rank in range(2):
            got = ddp_results[rank]["threshold"]["grads"][step]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for rank in range(2):
        assert ddp_results[rank]["threshold"]["bytes_sent"] == sent_bytes[rank]


def test_ddp_adacomp_matches_the_bin_rule(ddp_results):
    res = [np.zeros(N), np.zeros(N)]
    for step in range(2):
        sent = []
        for rank in range(2):
            g = _x(rank, step)
            acc = g + res[rank]
            h = acc + g
            s = np.zeros(N)
            for start in range(0, N, 5):
                b = slice(start, start + 5)
                gmax = np.abs(acc[b]).max()
                s[b] = np.where(np.abs(h[b]) >= gmax, acc[b], 0.0)
            res[rank] = acc - s
            sent.append(s)
        got = ddp_results[0]["adacomp"]["grads"][step]
        np.testing.assert_allclose(got, (sent[0] + sent[1]) / 2, rtol=1e-5, atol=1e-6)


def test_ddp_dgc_matches_momentum_correction(ddp_results):
    m, k = 0.5, 2
    u = [np.zeros(N), np.zeros(N)]
    v = [np.zeros(N), np.zeros(N)]
    for step in range(2):
        sent = []
        for rank in range(2):
            u[rank] = m * u[rank] + _x(rank, step)
            v[rank] = v[rank] + u[rank]
            s = _topk_ref(v[rank], k)
            chosen = s != 0
            v[rank][chosen] = 0.0
            u[rank][chosen] = 0.0
            sent.append(s)
        got = ddp_results[1]["dgc"]["grads"][step]
        np.testing.assert_allclose(got, (sent[0] + sent[1]) / 2, rtol=1e-5, atol=1e-6)


def test_ddp_randomk_is_unbiased_and_sends_values_only(ddp_results):
    mean_grad = (_x(0, 0) + _x(1, 0)) / 2
    steps = ddp_results[0]["randomk_steps"]
    # per entry: m * (n/k) * Bernoulli(k/n); variance m^2 (n/k - 1) = 3 m^2
    std = np.abs(mean_grad) * math.sqrt(3) / math.sqrt(steps)
    for rank in range(2):
        got = ddp_results[rank]["randomk_mean"]
        assert (np.abs(got - mean_grad) <= 5 * std + 1e-6).all()
    np.testing.assert_array_equal(ddp_results[0]["randomk_mean"], ddp_results[1]["randomk_mean"])
    k = 5  # 25% of 20; shared indices: only the k float32 values are all-reduced
    assert ddp_results[0]["randomk_bytes"] == steps * k * 4


def _fails_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("deliberate failure")
    return rank


def test_launch_reports_a_failing_worker_and_cleans_up():
    import multiprocessing

    with pytest.raises(ddp.WorkerError, match=r"rank 1 failed(.|\n)*ValueError: deliberate"):
        ddp.launch(_fails_on_rank_one, world_size=2, timeout=120)
    assert multiprocessing.active_children() == []
    with pytest.raises(ValueError, match="world_size"):
        ddp.launch(_fails_on_rank_one, world_size=0)


def test_launch_names_what_a_spawned_worker_cannot_receive(monkeypatch):
    import multiprocessing
    import sys
    import types

    with pytest.raises(ddp.WorkerError, match="cannot send fn(.|\n)*not a lambda"):
        ddp.launch(lambda rank, world_size: rank, world_size=2)
    with pytest.raises(ddp.WorkerError, match="cannot send args"):
        ddp.launch(_fails_on_rank_one, world_size=2, args=(lambda: 0,))

    def in_a_notebook(rank, world_size):
        return rank

    in_a_notebook.__module__ = "__main__"  # as a function defined in a notebook cell is
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # no file
    with pytest.raises(ddp.WorkerError, match="defined in a notebook(.|\n)*\\.py file"):
        ddp.launch(in_a_notebook, world_size=2)
    assert multiprocessing.active_children() == []
