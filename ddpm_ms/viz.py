"""Pictures people look at: sample grids (PNG), denoising animations (GIF), loss curves, the forward process."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
from matplotlib import animation  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from .paths import written  # noqa: E402  pylint: disable=wrong-import-position


def save_figure(fig, path, **savefig_kwargs):
    """Save ``fig`` to ``path`` atomically (a full disk: one OutputError line, no half-written file), close it."""
    try:
        with written(path) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def to_display(images):
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] in [0, 1] (clipped)."""
    images = np.asarray(images, dtype=np.float32)
    return np.clip((images.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)


def make_grid(images, nrow=8, pad=2):
    """Tile [N, C, H, W] images in [-1, 1] into one [rows*(H+pad)+pad, nrow*(W+pad)+pad, C] array in [0, 1]."""
    imgs = to_display(images)
    n, h, w, c = imgs.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = np.ones((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = imgs[i]
    return grid


def read_grid(path, image_size=28, channels=1, pad=2):
    """Inverse of an exact-pixel :func:`save_grid`: PNG -> [N, C, S, S] in [-1, 1] (trailing blank tiles dropped)."""
    img = plt.imread(path)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img[..., :3] if img.ndim == 3 else img[..., None].repeat(3, -1)
    step = image_size + pad
    rows, cols = (img.shape[0] - pad) // step, (img.shape[1] - pad) // step
    if rows * step + pad != img.shape[0] or cols * step + pad != img.shape[1] or rows == 0:
        raise ValueError(f"{path} is not a grid of {image_size}x{image_size} tiles with {pad}-pixel padding")
    tiles = [img[pad + r * step: pad + r * step + image_size, pad + c * step: pad + c * step + image_size]
             for r in range(rows) for c in range(cols)]
    while tiles and np.all(tiles[-1] == 1.0):
        tiles.pop()
    out = np.stack(tiles).transpose(0, 3, 1, 2)[:, :channels]
    return out.astype(np.float32) * 2.0 - 1.0


def _show(ax, img):
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set_axis_off()


def save_grid(images, path, nrow=8, title=None, row_labels=None):
    """Save [N, C, H, W] images in [-1, 1] as a PNG grid (2-pixel white padding).

    Without a title or row labels the PNG holds the grid's exact pixels (readable by
    :func:`read_grid`); with them it is drawn as a figure.
    """
    grid = make_grid(images, nrow)
    if title is None and row_labels is None:
        with written(path) as tmp:
            plt.imsave(tmp, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0)
        return path
    scale = max(1.0, 8.0 / max(grid.shape[:2]) * 100)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 100 * scale, grid.shape[0] / 100 * scale), dpi=100)
    _show(ax, grid)
    if title:
        ax.set_title(title)
    if row_labels:
        h = (grid.shape[0] - 2) / len(row_labels)
        for i, label in enumerate(row_labels):
            ax.text(-4, 2 + h * (i + 0.5), label, ha="right", va="center", fontsize=9)
    return save_figure(fig, path, bbox_inches="tight")


def save_gif(frames, path, index=0, every=1, interval=50):
    """Animate the denoising of image ``index``: frames [T, N, C, H, W] in [-1, 1] -> GIF."""
    frames = np.asarray(frames)[::every, index]
    fig, ax = plt.subplots(figsize=(2.5, 2.5), dpi=80)
    ax.set_axis_off()
    shown = to_display(frames)
    artists = []
    for img in shown:
        im = ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, animated=True)
        artists.append([im])
    anim = animation.ArtistAnimation(fig, artists, interval=interval, blit=True, repeat_delay=1000)
    try:
        with written(path) as tmp:
            anim.save(tmp, writer=animation.PillowWriter(fps=max(1, 1000 // interval)))
    finally:
        plt.close(fig)
    return path


def read_metrics(path):
    """Rows of a metrics JSONL file as dicts."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(metrics_path, path):
    """Loss against step from a metrics JSONL log (its rows with a loss), with a moving average, as PNG."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    if len(loss) >= 5:
        k = max(2, len(loss) // 20)
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    return save_log_plot(fig, ax, path, "step", "loss")


def save_log_plot(fig, ax, path, xlabel, ylabel):
    """Label ``ax`` (log y, grid, legend), save ``fig`` as PNG at ``path`` and close it; returns ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_fd_curve(metrics_path, path):
    """FD of the evaluations during training (metrics rows with "fd") against step and against wall time, as PNG."""
    rows = [r for r in read_metrics(metrics_path) if "fd" in r]
    fd = np.array([r["fd"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100, sharey=True)
    for ax, key, label, scale in ((axes[0], "step", "step", 1.0), (axes[1], "wall_s", "wall time (min)", 60.0)):
        ax.plot(np.array([r[key] for r in rows]) / scale, fd, "o-", lw=1.2, ms=3)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    best = int(np.argmin(fd))
    axes[0].plot(rows[best]["step"], fd[best], "*", ms=12, label=f"best: FD {fd[best]:.1f} at step {rows[best]['step']}")
    axes[0].legend()
    axes[0].set_ylabel(f"FD ({rows[0].get('eval_num', '?')} samples)")
    axes[0].set_yscale("log")
    fig.tight_layout()
    return save_figure(fig, path)


def forward_diffusion_figure(sched, image, path, timesteps=(0, 50, 100, 150, 199), seed=0):
    """The tutorial's figure: one image [C, H, W] in [-1, 1] noised by q(x_t | x_0) at each t, as PNG."""
    from .diffusion import q_sample  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    image = np.asarray(image, np.float32)[None]
    rng = np.random.default_rng(seed)
    ts = [t for t in timesteps if t < sched.num_timesteps]
    fig, axes = plt.subplots(1, len(ts), figsize=(2 * len(ts), 2.3), dpi=100)
    for ax, t in zip(np.atleast_1d(axes), ts):
        noise = ms.Tensor(rng.standard_normal(image.shape, dtype=np.float32))
        x_t = q_sample(sched, ms.Tensor(image), ms.Tensor(np.array([t], np.int32)), noise).asnumpy()
        _show(ax, to_display(x_t)[0])
        ax.set_title(f"t = {t}")
    fig.tight_layout()
    return save_figure(fig, path)


def _figure_of_rows(columns, titles, path, title=None, rows=6):
    """A labelled figure: ``columns`` is a list of [N, C, H, W] arrays in [-1, 1], one per column (the first
    ``rows`` images each), with ``titles`` over the columns."""
    n = min(rows, len(columns[0]))
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.35 * n + 0.4), dpi=100, squeeze=False)
    for c, (images, name) in enumerate(zip(columns, titles)):
        shown = to_display(images[:n])
        for r in range(n):
            _show(axes[r, c], shown[r])
        axes[0, c].set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def inpaint_figure(images, mask, recorder, done, path, title=None, picks=4):
    """Rows of: the original, the masked input (hidden pixels grey), the predicted x_0 at ``picks`` steps of the
    reverse process (``recorder``: a Recorder of "x0"), and the result."""
    mask = np.broadcast_to(mask, images.shape)
    frames = recorder.stack("x0")
    idx = np.unique(np.linspace(0, len(frames) - 1, picks + 1).round().astype(int))[:-1]
    columns = [images, np.where(mask > 0, images, 0.0)] + [frames[i] for i in idx] + [done]
    titles = ["original", "masked input"] + [f"x0 at t={recorder.t[i]}" for i in idx] + ["result"]
    return _figure_of_rows(columns, titles, path, title)


def strength_figure(images, edited, strengths, path, title=None):
    """Rows: one image, then SDEdit at each strength (``edited`` [S, N, C, H, W])."""
    return _figure_of_rows([images] + list(edited), ["input"] + [f"strength {s:g}" for s in strengths], path, title)
