"""The benchmark's PNG chart: speedup over plain decoding per mode, overall and per prompt
category. Needs matplotlib (`pip install "heterospec[bench]"`); the benchmark runs without it."""
from __future__ import annotations

import re


class ChartUnavailable(RuntimeError):
    pass


def chart_series(results: dict) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """(column labels, [(mode label, speedups)]): 'all' then each category; of llama.cpp's grid,
    only plain decoding and the best speculative setting (the one a user would pick)."""
    ok = {k: v for k, v in results.items() if "error" not in v and v.get("speedup")}
    cats = sorted({c for v in ok.values() for c in v.get("categories", {})})
    columns = ["all"] + cats if len(cats) > 1 else ["all"]
    spec = [k for k in ok if k.startswith("llama.cpp-spec")]
    best_spec = max(spec, key=lambda k: ok[k]["tokens_per_second"]) if spec else None
    series = []
    for name, v in ok.items():
        if name.startswith("llama.cpp-spec") and name != best_spec:
            continue
        label = f"{name} (best of grid)" if name == best_spec else name
        values = [v["speedup"]] + [v["categories"].get(c, {}).get("speedup") or 0.0 for c in columns[1:]]
        series.append((label, values))
    return columns, series


def _short(label: str) -> str:
    # a policy file's folder says nothing on a chart
    return re.sub(r"policy=[^,]*?([^/,]+?)(\.json)?(?=,|$)", r"policy=\1", label)


def write_chart(results: dict, path: str, title: str = "") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")   # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ChartUnavailable(f"matplotlib is not installed ({e}); pip install 'heterospec[bench]'") from None
    columns, series = chart_series(results)
    if not series:
        raise ChartUnavailable("no mode has figures to plot")
    n = len(series)
    if len(columns) == 1:   # one group: a bar per mode, labelled underneath
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 5.0), dpi=110)
        bars = ax.bar(range(n), [v[0] for _, v in series], 0.7, color=[f"C{i}" for i in range(n)])
        ax.bar_label(bars, fmt="%.2fx", fontsize=8)
        ax.set_xticks(range(n), [_short(label) for label, _ in series], rotation=30, ha="right", fontsize=8)
    else:                   # a group per category, a bar per mode
        width = 0.8 / n
        fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + len(columns) * (0.3 * n + 0.4)), 5.5), dpi=110)
        for i, (label, values) in enumerate(series):
            ax.bar([c + (i - (n - 1) / 2) * width for c in range(len(columns))], values, width * 0.92,
                   label=_short(label))
        ax.set_xticks(range(len(columns)), columns, rotation=20 if len(columns) > 4 else 0)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speedup over plain decoding (ar)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
