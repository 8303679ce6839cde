"""PNG plots for the dataset card (matplotlib, Agg, no pyplot global state)."""

from __future__ import annotations

from pathlib import Path

# PNG metadata without library version / dates, so identical input gives identical bytes.
_PNG_METADATA = {"Software": None}


def available() -> bool:
    """matplotlib is the `plots` extra: without it a release is written without its two plots
    (the card says so) rather than failing, so the core install can run source -> write."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _mpl():
    """matplotlib on first use: importing it costs ~0.8 s, and every `infir` command imports this
    module through the config (train -> release), while only `write` draws."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    return Figure, FigureCanvasAgg, MaxNLocator


def _save(fig, path: Path) -> None:
    _, FigureCanvasAgg, _ = _mpl()
    FigureCanvasAgg(fig)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100, metadata=_PNG_METADATA)
    tmp.replace(path)


def plot_lengths(word_lengths: dict[str, list[int]], path: Path) -> None:
    """One histogram of word counts per text column."""
    Figure, _, MaxNLocator = _mpl()
    cols = list(word_lengths)
    ncols = 2
    nrows = max(1, (len(cols) + ncols - 1) // ncols)
    fig = Figure(figsize=(10, 2.6 * nrows))
    for i, col in enumerate(cols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = word_lengths[col]
        if values:
            lo, hi = min(values), max(values)
            step = max(1, -(-(hi - lo + 1) // 30))  # integer-wide bins, at most 30
            edges = [lo - 0.5 + k * step for k in range((hi - lo + 1 + step - 1) // step + 1)]
            ax.hist(values, bins=edges, color="#4477aa")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("words", fontsize=8)
        ax.set_ylabel("rows", fontsize=8)
        ax.tick_params(labelsize=7)
    height = 2.6 * nrows
    fig.suptitle("Length distribution of each text column (words)", y=1 - 0.2 / height)
    # fixed margins: tight_layout costs more than the drawing itself
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.75 / height, bottom=0.45 / height,
                        hspace=0.55, wspace=0.18)
    _save(fig, path)


def plot_rejections(failures: dict[str, int], candidates: int, path: Path) -> None:
    """Bar chart of rejection reasons (failed judge checks) per check."""
    Figure, _, MaxNLocator = _mpl()
    checks = sorted(failures)
    fig = Figure(figsize=(8, max(2.5, 0.45 * len(checks) + 1.2)))
    ax = fig.add_subplot(1, 1, 1)
    if checks:
        counts = [int(failures[c]) for c in checks]
        ax.barh(range(len(checks)), counts, color="#cc6677")
        ax.set_yticks(range(len(checks)))
        ax.set_yticklabels(checks, fontsize=8)
        ax.invert_yaxis()
        for y, n in enumerate(counts):
            share = f" ({n / candidates:.0%})" if candidates else ""
            ax.text(n, y, f" {n}{share}", va="center", fontsize=8)
        ax.set_xlabel("rejected candidates failing the check")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no rejections recorded", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"Rejection reasons per judge check ({candidates} candidates)")
    longest = max((len(c) for c in checks), default=0)
    fig.subplots_adjust(left=min(0.55, 0.04 + 0.0095 * longest), right=0.9, top=0.88, bottom=0.18)
    _save(fig, path)
