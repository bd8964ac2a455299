"""The benchmark harness behind `ctc-live bench`.

Stage modules register benchmarks in a module named ``bench`` inside their subpackage
(``ctc_live/<stage>/bench.py``); the harness imports every such module, runs the ones asked
for, prints one table and writes JSON. A benchmark returns figures; a figure may carry a
baseline measured side by side in the same run, and the table shows value / baseline.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import ctc_live
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class BenchOptions:
    quick: bool = False
    config_file: Path | None = None


@dataclass
class Benchmark:
    name: str
    help: str
    func: Callable[[BenchOptions], list[Figure]]


@dataclass
class BenchResult:
    name: str
    seconds: float
    figures: list[Figure] = field(default_factory=list)


REGISTRY: dict[str, Benchmark] = {}


def benchmark(name: str, help: str) -> Callable:
    """Register ``func(options) -> list[Figure]`` as the benchmark ``name``."""

    def register(func: Callable[[BenchOptions], list[Figure]]) -> Callable:
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise ValueError(f"benchmark {name!r} registered twice")
        REGISTRY[name] = Benchmark(name, help, func)
        return func

    return register


def discover() -> dict[str, Benchmark]:
    """Import every ``ctc_live.<stage>.bench`` module so its benchmarks register."""
    for info in pkgutil.iter_modules(ctc_live.__path__):
        if info.ispkg and importlib.util.find_spec(f"ctc_live.{info.name}.bench"):
            importlib.import_module(f"ctc_live.{info.name}.bench")
    return REGISTRY


def run(names: list[str], options: BenchOptions) -> list[BenchResult]:
    available = discover()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise CtcLiveError(
            f"unknown benchmark {', '.join(unknown)}; available: {', '.join(sorted(available))}"
        )
    results = []
    for name in names or sorted(available):
        log.info("running benchmark %s", name)
        start = time.perf_counter()
        figures = available[name].func(options)
        results.append(BenchResult(name, time.perf_counter() - start, figures))
    return results


def format_table(results: list[BenchResult]) -> str:
    rows = [("benchmark", "figure", "value", "unit", "baseline", "ratio")]
    for result in results:
        for f in result.figures:
            baseline = "" if f.baseline is None else f"{_num(f.baseline)} ({f.baseline_name})"
            ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
            rows.append((result.name, f.name, _num(f.value), f.unit, baseline, ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{value:.3e}"


def to_json(results: list[BenchResult]) -> dict:
    return {
        "ctc_live_version": ctc_live.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "benchmarks": {
            r.name: {
                "seconds": round(r.seconds, 3),
                "figures": [asdict(f) | {"ratio": f.ratio} for f in r.figures],
            }
            for r in results
        },
    }


def write_json(results: list[BenchResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(results), indent=2) + "\n", encoding="utf-8")
