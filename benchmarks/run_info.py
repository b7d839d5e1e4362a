"""What every benchmark's JSON records about the run, and how it is written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine(load_before: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Versions, machine and load averages: what a reader needs to weigh the timings
    (``load_before``: ``os.getloadavg()`` taken when the measurements began)."""
    info: dict[str, Any] = {}
    if load_before is not None:
        info["load_average_before"] = load_before
        info["load_average_after"] = os.getloadavg()
    return info | {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write(report: dict[str, Any], out: str | Path, **dumps: Any) -> Path:
    """Write ``report`` as indented JSON to ``out`` (its folder made), and say where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, **dumps))
    print(f"wrote {out}")
    return out
