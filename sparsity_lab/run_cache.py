"""Results of expensive library runs, kept on disk and found again by content hash.

A full-mode notebook spends most of its time in a few library calls whose result follows
from their arguments alone: a regularizer's training run
(:func:`sparsity_lab.regularizers.compare.run`), the rounds of a lottery-ticket experiment
(:func:`sparsity_lab.phenomena.tickets.ticket_rounds`).  Such a function is decorated with
:func:`cached_run`; when the cache reads, a call whose key is on disk reads its result back
instead of training again.  So a notebook that ``make book`` has run opens in JupyterLab
(``make lab``) and runs again in seconds or minutes where it trained for a quarter of an
hour, and after an edit of its code it re-uses the runs the edit did not touch.

The key is a SHA-256 of the function's name, its arguments after defaults are applied (a
:class:`~sparsity_lab.recipes.Task` by its names, seed, options, recipe and a hash of its
data), every source file of this package, the versions of Python, torch and NumPy, and
torch's number of threads.  So an edit anywhere in the library, or new data, never reads an
older result; and the threads count because torch splits its sums by them: LeNet-300-100
with L1 on MNIST ends with another strength and validation accuracy on two threads than
on one.  (The notebooks that use this cache pin one thread, which is what ``make book``
gives each of its notebooks, so JupyterLab reads the book's runs.)

The key cannot see code from outside the package.  A call that names a method registered
elsewhere, or passes an object without a content hash (a model, a function), is never
cached.  Code that patches the library while it runs is not seen either: switch the cache
off (``SPARSITY_LAB_RUN_CACHE=0``) while you do that.

``$SPARSITY_LAB_RUN_CACHE`` sets the :func:`mode`: ``1`` reads results back and writes new
ones (``make book`` and ``make lab``); ``write`` always runs and writes what it computed
(``BOOK_RUN_CACHE=write make book``: every run trained afresh); anything else, or nothing,
leaves the cache alone (the tests and the smoke runs of CI).  While a call computes a
result, another process that wants the same one waits for it and reads it
(:func:`sparsity_lab.paths.exclusive`), so two notebooks side by side never train one run
twice.  Results live as JSON under ``<default_cache_dir()>/runs`` and are written only
when they read back exactly (every number, type and table dtype), so a cached result
equals the fresh one.  What a run measured of the machine, such as its seconds, is the
first run's.  :func:`counts` says how many calls of this process were read back and how
many ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import platform
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from .paths import default_cache_dir, exclusive, write_atomically

__all__ = ["ENV", "add_counts", "cached_run", "counts", "directory", "mode", "summary"]

#: The environment variable that sets the cache's :func:`mode`.
ENV = "SPARSITY_LAB_RUN_CACHE"

F = TypeVar("F", bound=Callable[..., Any])

_COUNTS: Counter[str] = Counter()


class _NoKey(Exception):
    """An argument or a result that this cache cannot describe exactly."""


def mode() -> str:
    """``"read"`` (read results back, write new ones), ``"write"`` (run, then write) or
    ``"off"``, from ``$SPARSITY_LAB_RUN_CACHE`` (``1``, ``write`` or anything else)."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in {"1", "true", "on", "yes", "read"}:
        return "read"
    return "write" if setting == "write" else "off"


def directory() -> Path:
    """Where the results are kept: ``runs`` under :func:`sparsity_lab.paths.default_cache_dir`."""
    return default_cache_dir() / "runs"


def counts() -> dict[str, int]:
    """Calls of cached functions in this process: ``{"read": n, "ran": m}``; a call that
    could not be cached (cache off, or an argument without a content hash) counts as run."""
    return {"read": _COUNTS["read"], "ran": _COUNTS["ran"]}


def add_counts(calls: dict[str, int]) -> None:
    """Count in this process the calls another made for it (``{"read": n, "ran": m}``, the
    difference of two :func:`counts` there): a sweep's forked workers."""
    _COUNTS.update({k: calls[k] for k in ("read", "ran")})


def summary(since: dict[str, int] | None = None) -> str:
    """A sentence for a notebook's text on the calls since ``since`` (an earlier
    :func:`counts`): how many were read back from the cache, or ``""`` when none was."""
    before = since or {"read": 0, "ran": 0}
    read, ran = (counts()[k] - before[k] for k in ("read", "ran"))
    if read == 0:
        return ""
    return (
        f"{read} of these {read + ran} runs were read back from the run cache "
        f"(${ENV}=1): results of the same calls with the same library, data and versions, "
        f"so their numbers are those of a fresh run, but any seconds are those measured "
        f"when they first ran.  Set ${ENV}=0 to train them again."
    )


# ------------------------------------------------------------------------------ the key


def _library_digest() -> str:
    """A hash of every source file of this package, read again when one has changed."""
    package = Path(__file__).parent
    files = sorted(package.rglob("*.py"))
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return _digest_of_files(stamp)


@functools.lru_cache(maxsize=4)
def _digest_of_files(stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    package = Path(__file__).parent
    for name, _, _ in stamp:
        h.update(str(Path(name).relative_to(package)).encode())
        h.update(Path(name).read_bytes())
    return h.hexdigest()


def _tensor_digest(tensor: torch.Tensor) -> str:
    t = tensor.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{tuple(t.shape)} {t.dtype}".encode(), digest_size=16)
    h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _task_key(t: Any) -> dict[str, Any]:
    """A task by what determines its runs: names, seed, options, recipe and data."""
    from . import recipes  # recipes imports the modules that use this cache

    bundle = t.bundle
    splits = {
        name: [_tensor_digest(x) for x in getattr(bundle, name).tensors]
        for name in ("train", "val", "test")
    }
    return {
        "task": [t.model_name, t.data_name, t.seed, t.batch_size],
        "options": _canonical(t.options),
        "recipe": _canonical(recipes.recipe_for(t.model_name, t.data_name)),
        "input_shape": list(bundle.input_shape),
        "n_classes": bundle.n_classes,
        "vocab": _canonical(getattr(bundle, "vocab", None)),
        "data": splits,
    }


def _canonical(value: Any) -> Any:
    """``value`` as JSON that tells apart everything a run could see, or :class:`_NoKey`."""
    from .recipes import Task

    if value is None or isinstance(value, (bool, str)):
        return value
    if type(value) is int:
        return value
    if type(value) is float or isinstance(value, np.generic):
        # repr keeps -0.0, nan and inf apart from 0.0 and from strings, and a NumPy scalar
        # apart from a Python number
        return _encode(value)
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_canonical(v) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _NoKey("a dict with keys that are not strings")
        return {"dict": [[k, _canonical(v)] for k, v in value.items()]}
    if isinstance(value, Task):
        return _task_key(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {type(value).__qualname__: _canonical(fields)}
    raise _NoKey(f"an argument of type {type(value).__name__}")


def _key(fn: Callable[..., Any], bound: inspect.BoundArguments) -> tuple[str, str]:
    """The key's JSON text and its SHA-256, for a call with arguments ``bound``."""
    text = json.dumps(
        {
            "fn": f"{fn.__module__}.{fn.__qualname__}",
            "arguments": _canonical(dict(bound.arguments)),
            "library": _library_digest(),
            "versions": [platform.python_version(), torch.__version__, np.__version__],
            "threads": torch.get_num_threads(),
        },
        sort_keys=True,
    )
    return text, hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- the result


def _encode(value: Any) -> Any:
    """A result as JSON that reads back to an equal value of the same types."""
    if value is None or isinstance(value, (bool, str)) or type(value) is int:
        return value
    if type(value) is float:
        return {"float": repr(value)}
    if isinstance(value, (np.floating, np.integer, np.bool_)) and value.dtype.kind in "biuf":
        return {"numpy": [value.dtype.str, repr(value.item())]}
    if type(value) in (list, tuple):
        return {type(value).__name__: [_encode(v) for v in value]}
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {"dict": [[k, _encode(v)] for k, v in value.items()]}
    if isinstance(value, pd.DataFrame) and isinstance(value.index, pd.RangeIndex):
        if value.index.start != 0 or value.index.step != 1 or not value.columns.is_unique:
            raise _NoKey("a DataFrame with an index other than 0..n-1 or repeated columns")
        columns = []
        for name in value.columns:
            column = value[name]
            if not isinstance(name, str) or column.dtype.kind not in "biufOT":
                raise _NoKey(f"column {name!r} of dtype {column.dtype}")
            columns.append([name, str(column.dtype), [_encode(v) for v in column.tolist()]])
        return {"DataFrame": [len(value), columns]}
    raise _NoKey(f"a result of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((kind, body),) = value.items()
    if kind == "float":
        return float(body)
    if kind == "numpy":
        dtype, text = body
        return np.dtype(dtype).type(float(text) if np.dtype(dtype).kind == "f" else _exact(text))
    if kind in ("list", "tuple"):
        items = [_decode(v) for v in body]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _decode(v) for k, v in body}
    if kind == "DataFrame":
        n, columns = body
        data = {
            name: pd.Series([_decode(v) for v in values], dtype=dtype)
            for name, dtype, values in columns
        }
        return pd.DataFrame(data, index=pd.RangeIndex(n))
    raise ValueError(f"unknown encoding {kind!r}")


def _exact(text: str) -> int | bool:
    """An integer or a boolean from its ``repr``."""
    if text in ("True", "False"):
        return text == "True"
    return int(text)


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types, NaN equal to NaN; tables with the same dtypes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, pd.DataFrame):
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
        except AssertionError:
            return False
        return all(_same(x, y) for name in a for x, y in zip(a[name], b[name], strict=True))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (float, np.floating)) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (float, np.floating)):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


# ------------------------------------------------------------------------------ the files


def _read(path: Path, key_text: str) -> tuple[bool, Any]:
    """``(True, result)`` from ``path`` when it holds this key's result, else ``(False, None)``."""
    if not path.exists():
        return False, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["key"] != key_text:  # a damaged file, or a hash collision
            raise ValueError("it holds another call's result")
        return True, _decode(record["result"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        warnings.warn(
            f"ignoring the run cache's file {path} ({error}); running again", stacklevel=3
        )
        return False, None


# ------------------------------------------------------------------------------ decorator


def _keep(path: Path, key_text: str, result: Any) -> None:
    """Write ``result`` under ``path`` if it reads back exactly, so that a cached result
    equals the fresh one (a result with no exact JSON form is not kept)."""
    try:
        encoded = _encode(result)
    except _NoKey:
        return
    if not _same(_decode(json.loads(json.dumps(encoded))), result):
        return
    try:
        write_atomically(path, json.dumps({"key": key_text, "result": encoded}).encode())
    except OSError as error:  # the result is the caller's all the same
        warnings.warn(f"the run cache could not keep a result ({error})", stacklevel=3)


def cached_run(accepts: Callable[[dict[str, Any]], bool] = lambda arguments: True):
    """Decorate a function whose result follows from its arguments, so that its results are
    cached on disk unless the :func:`mode` is ``"off"``.

    ``accepts(arguments)`` says whether a call's arguments (defaults applied, by name)
    leave nothing outside the key; a call it refuses, or whose arguments or result have no
    exact JSON form, runs as if the cache were off.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if mode() == "off":
                _COUNTS["ran"] += 1
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            try:
                key_text, digest = _key(fn, bound) if accepts(bound.arguments) else ("", "")
            except _NoKey:
                key_text, digest = "", ""
            path = directory() / f"{fn.__name__}-{digest[:32]}.json"
            reads = bool(digest) and mode() == "read"
            # two notebooks that want the same run at once: one computes it, the other waits
            # and reads it back
            with exclusive(path) if reads else contextlib.nullcontext():
                if reads:
                    found, result = _read(path, key_text)
                    if found:
                        _COUNTS["read"] += 1
                        return result
                _COUNTS["ran"] += 1
                result = fn(*args, **kwargs)
                if digest:
                    _keep(path, key_text, result)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
