"""Shared by the benchmarks (run as scripts from bench/, so a plain `import stats` finds it)."""


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank): pct(values, 0.99) is the p99."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
