"""Tables and figures of sampler comparisons (``ddpm-ms compare-samplers``): plain functions of result rows.

A row is {"run": {"sampler", "steps", "spacing", options...}, "first_s", "cached_s", "fd", "kid", "is",
"class_histogram", ...}.
"""


def label(run):
    """A row name: 'dpm++2m-20 logsnr', 'ddim-50 eta=1'."""
    extra = [run["spacing"]] if run["spacing"] != "uniform" else []
    extra += [f"{k}={run[k]:g}" for k in run if k not in ("sampler", "steps", "spacing")]
    return " ".join([f"{run['sampler']}-{run['steps']}"] + extra)


def plot_quality(rows, path):
    """FD against network calls, one line per sampler and spacing (log-scaled calls)."""
    from .viz import plt, save_figure  # pylint: disable=import-outside-toplevel  # matplotlib on first use
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    series = {}
    for row in rows:
        key = " ".join([row["run"]["sampler"]] + label(row["run"]).split(" ")[1:])
        series.setdefault(key, []).append((row["run"]["steps"], row["fd"]))
    for key, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("network calls per image (steps)")
    ax.set_ylabel("FD to real images (lower is better)")
    ax.set_title("sample quality against sampling cost", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return series


def table(rows):
    """The Markdown table of the rows."""
    lines = ["| sampler | network calls | s / 64 images, first call | cached | FD | KID | IS | class histogram |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {label(r['run'])} | {r['run']['steps']} | {r['first_s']:.1f} | {r['cached_s']:.1f} | "
                     f"{r['fd']:.1f} | {r['kid']:.4g} | {r['is']:.2f} | {' '.join(map(str, r['class_histogram']))} |")
    return "\n".join(lines)


