"""Figures that show the reverse process, for learners (``sample.py --explain`` and the notebook).

Each figure has a function that computes its numbers and one that draws them (returning the matplotlib
Figure), so what is drawn can be checked against a direct computation.
"""
import numpy as np

from .diffusion import elementwise_loss
from .samplers import Recorder, generate
from .sampling import Denoiser
from .viz import plt, save_figure, to_display


def chain_snapshots(denoiser, image_shape, seed=0, picks=6, labels=None, guidance=1.0, **sampler):
    """One image's chain at ``picks`` evenly spaced steps: {t [S], x_t, eps, x0: [S, C, H, W]}.

    ``sampler`` holds :func:`~ddpm_ms.sampling.generate`'s sampler arguments (sampler, steps, spacing, eta).
    """
    rec = Recorder(("x_t", "eps", "x0"))
    generate(denoiser, image_shape, 1, seed=seed, batch_size=1, labels=labels, guidance=guidance, callback=rec,
             progress=False, **sampler)
    idx = np.unique(np.linspace(0, len(rec.t) - 1, picks).round().astype(int))
    return {"t": np.asarray(rec.t)[idx], **{k: rec.stack(k)[idx, 0] for k in ("x_t", "eps", "x0")}}


def plot_chain_snapshots(snap):
    """Rows: the picked steps; columns: x_t, the predicted noise, the predicted x_0."""
    rows = len(snap["t"])
    fig, axes = plt.subplots(rows, 3, figsize=(5.4, 1.8 * rows), squeeze=False)
    for r in range(rows):
        for c, (key, title) in enumerate((("x_t", "x_t"), ("eps", "predicted noise eps"),
                                          ("x0", "predicted x_0"))):
            img = snap[key][r]
            if key == "eps":   # noise is roughly N(0, 1): show +-3 sigma
                img = np.clip(img / 3.0, -1.0, 1.0)
            shown = to_display(img[None])[0]
            ax = axes[r, c]
            ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"t = {snap['t'][r]}", fontsize=9)
    fig.suptitle("the reverse process, one image", fontsize=10)
    fig.tight_layout()
    return fig


def chain_std(denoisers, image_shape, num=16, seed=0, labels=None, guidance=1.0, **sampler):
    """Pixel standard deviation of x_t at every step, per named Denoiser: {t [S], <name>: [S]} (same x_T)."""
    out = {}
    for name, denoiser in denoisers.items():
        rec = Recorder(("x_t",))
        generate(denoiser, image_shape, num, seed=seed, batch_size=num, labels=labels, guidance=guidance,
                 callback=rec, progress=False, **sampler)
        out["t"] = np.asarray(rec.t)
        out[name] = rec.stack("x_t").reshape(len(rec.t), -1).std(axis=1)
    return out


def plot_chain_std(stds):
    """std of x_t against t (log scale), one line per Denoiser, with the std of x_T for reference."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in stds.items():
        if name != "t":
            ax.plot(stds["t"], values, label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="std of x_T ~ N(0, I)")
    ax.set_xlabel("timestep t (sampling runs right to left)")
    ax.set_ylabel("pixel std of x_t")
    ax.set_yscale("log")   # an unclipped chain can grow by orders of magnitude
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title("x_t along the reverse chain", fontsize=10)
    fig.tight_layout()
    return fig


def loss_by_timestep(denoise, alphas_cumprod, x0, loss_type="huber", buckets=10, seed=0):
    """The training loss of a held batch x0 [B,C,H,W] by timestep bucket: {edges [K+1], loss [K]}.

    In each bucket every image gets a random t in it and its own noise; the loss is the objective's
    mean (eq. 14) with ``loss_type``, unweighted. ``denoise(x_t, t [B]) -> (x0, eps)`` should not clip (its
    eps is then the network's).
    """
    from mindspore import Tensor  # pylint: disable=import-outside-toplevel
    ab = np.asarray(alphas_cumprod)
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, len(ab), buckets + 1).round().astype(int)
    losses = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        t = rng.integers(lo, hi, len(x0))
        noise = rng.standard_normal(x0.shape).astype(np.float32)
        a = ab[t].reshape(-1, *([1] * (x0.ndim - 1)))
        x_t = (np.sqrt(a) * x0 + np.sqrt(1 - a) * noise).astype(np.float32)    # eq. 4
        _, eps = denoise(x_t, t)
        losses.append(float(elementwise_loss(Tensor(eps), Tensor(noise), loss_type).mean().asnumpy()))
    return {"edges": edges, "loss": np.asarray(losses)}


def plot_loss_by_timestep(data, loss_type="huber"):
    """Bars: the loss of each timestep bucket."""
    edges = data["edges"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(edges[:-1], data["loss"], width=np.diff(edges), align="edge", edgecolor="black", linewidth=0.5)
    ax.set_xlabel("timestep t (bucket)")
    ax.set_ylabel(f"{loss_type} loss of eps prediction")
    ax.set_title("where the network is wrong: loss by timestep", fontsize=10)
    fig.tight_layout()
    return fig


def write_figures(model, sched, cfg, image_shape, held, out, seed=0, labels=None, guidance=1.0, clip_denoised=True,
                  **sampler):
    """explain_steps.png, explain_std.png and explain_loss.png in the folder ``out``; returns their paths.

    ``cfg``: the model's Config (its objective, loss type and classes). ``held`` [B,C,H,W] in [-1, 1]: training
    images for the loss by timestep. ``labels`` (with ``guidance``) condition the chains of a class-conditional
    model; the loss uses its unconditional eps.
    ``sampler`` holds :func:`~ddpm_ms.sampling.generate`'s sampler arguments.
    """
    import os  # pylint: disable=import-outside-toplevel

    clipped, raw = (Denoiser.from_config(model, sched, cfg, clip_denoised=c) for c in (True, False))
    null_class, loss_type = cfg.model.num_classes, cfg.diffusion.loss_type
    first, batch = (None, None) if labels is None else (labels[:1], labels[:16])
    snap = chain_snapshots(clipped if clip_denoised else raw, image_shape, seed=seed, labels=first,
                           guidance=guidance, **sampler)
    stds = chain_std({"x_0 clipped to [-1, 1]": clipped, "not clipped": raw}, image_shape, num=16, seed=seed,
                     labels=batch, guidance=guidance, **sampler)
    unconditional = raw.bind(None if null_class is None else np.full(len(held), null_class), 0.0)
    loss = loss_by_timestep(unconditional, sched.np["alphas_cumprod"], held, loss_type, seed=seed)
    figures = {"explain_steps.png": plot_chain_snapshots(snap), "explain_std.png": plot_chain_std(stds),
               "explain_loss.png": plot_loss_by_timestep(loss, loss_type)}
    paths = []
    for name, fig in figures.items():
        paths.append(save_figure(fig, os.path.join(out, name), dpi=110))
    return paths
