"""Timing harness: interleaved repeats, min/median/max, ratios of medians, goals."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Stats:
    """Samples of one side of a comparison (seconds, or any 'higher/lower is better' metric)."""

    name: str
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "min": min(self.samples),
            "median": self.median,
            "max": max(self.samples),
            "n": len(self.samples),
            **self.extra,
        }


@dataclass
class Goal:
    """A goal on the ratio of two medians: ``ours / other`` must be >= or <= ``target``."""

    label: str
    ratio: float
    target: float
    higher_is_better: bool = True
    note: str = ""
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def row(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        mark = "met" if self.met else "MISSED"
        u = self.unit
        return f"| {self.label} | {self.ratio:.3f}{u} | {op} {self.target:.3g}{u} | {mark} | {self.note} |"


@dataclass
class Comparison:
    """One numbered comparison: sides, goals and free-form notes."""

    number: str
    title: str
    sides: list[Stats] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "sides": [s.summary() for s in self.sides],
            "goals": [{**asdict(g), "met": g.met} for g in self.goals],
            "notes": self.notes,
        }


def interleave(
    sides: dict[str, Callable[[], float]], *, repeats: int, warmup: int = 1, unit: str = "s"
) -> dict[str, Stats]:
    """Run every side ``warmup`` times, then ``repeats`` rounds of one run each, in turn.

    Each callable returns its own measurement (seconds or a rate), so it can exclude set-up.
    """
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    stats = {name: Stats(name, unit=unit) for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            stats[name].samples.append(fn())
    return stats


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out
