"""What a trained model does besides sampling: inpainting (plain and RePaint), image-to-image (SDEdit) and
interpolation between starting noises. Plain numpy around a denoiser, like :mod:`ddpm_ms.samplers`.

    done = inpaint(denoise, image, mask, ts, alphas_cumprod, rng)                        # any sampler's steps
    done = repaint(denoise, image, mask, ts, alphas_cumprod, rng, jump_length=10, jump_n_sample=10)
    edited = sdedit(denoise, image, 0.5, alphas_cumprod, rng, sampler="ddim", steps=50)
    strip = interpolate(denoise, z0, z1, 8, alphas_cumprod, sampler="ddim", steps=50)

``denoise(x_t, t) -> (x0, eps)`` as for the samplers (a Denoiser with its labels bound); images [B,C,H,W] float32
in [-1, 1]; ``mask`` [B or 1, C or 1, H, W], 1 where a pixel is known (kept), 0 where it is to be filled in.
"""
import numpy as np

from .samplers import SAMPLERS, default_steps, timesteps

MASKS = ("left", "right", "top", "bottom", "center", "random")


def make_mask(name, shape, seed=0):
    """A named mask [1, 1, H, W] float32 for images of ``shape`` (..., H, W): 1 = known. "left" keeps the left half
    (the right half is filled in), "right", "top" and "bottom" likewise; "center" hides the middle quarter of the
    area; "random" hides half the pixels at random (``seed``)."""
    h, w = shape[-2:]
    m = np.ones((h, w), np.float32)
    if name == "left":
        m[:, w // 2:] = 0
    elif name == "right":
        m[:, :w // 2] = 0
    elif name == "top":
        m[h // 2:] = 0
    elif name == "bottom":
        m[:h // 2] = 0
    elif name == "center":
        m[h // 4:h - h // 4, w // 4:w - w // 4] = 0
    elif name == "random":
        m = (np.random.default_rng(seed).random((h, w)) < 0.5).astype(np.float32)
    else:
        raise ValueError(f"unknown mask {name!r}; choose one of {', '.join(MASKS)}, or give a mask file")
    return m[None, None]


def _alpha_bar_at(alphas_cumprod, ts, k):
    """alpha_bar at position k of the visited timesteps ``ts``; 1 at k = len(ts) (clean data)."""
    return alphas_cumprod[ts[k]] if k < len(ts) else 1.0


def _known_at(image, a, rng):
    """q(x_t | x_0) for the known image at alpha_bar ``a`` (eq. 4); the image itself at a = 1."""
    if a >= 1.0:
        return image
    return (np.sqrt(a) * image + np.sqrt(1.0 - a) * rng.standard_normal(image.shape, dtype=np.float32)).astype(
        np.float32)


def inpaint(denoise, image, mask, ts, alphas_cumprod, rng, sampler="ddpm", callback=None, **options):
    """Fill in the unknown pixels of ``image`` with any registered ``sampler`` over timesteps ``ts``: after every
    step the known pixels are replaced by the original noised to the next step's level (q(x_s | x_0), eq. 4), and by
    the original itself after the last one. x_T is the first draw of ``rng``. Returns [B,C,H,W]."""
    image = np.asarray(image, np.float32)
    mask = np.broadcast_to(np.asarray(mask, np.float32), image.shape)
    ab = np.asarray(alphas_cumprod, np.float64)
    x_T = rng.standard_normal(image.shape, dtype=np.float32)
    known_rng = np.random.default_rng(rng.integers(2 ** 63))    # the known pixels' noise, apart from the sampler's

    def put_back(info):
        known = _known_at(image, _alpha_bar_at(ab, ts, info["i"] + 1), known_rng)
        x = mask * known + (1.0 - mask) * info["x"]
        if callback is not None:
            callback(dict(info, x=x))
        return x

    return SAMPLERS[sampler].fn(denoise, x_T, ts, ab, rng, callback=put_back, **options)


def repaint_schedule(n, jump_length=10, jump_n_sample=10):
    """The positions RePaint visits among n timesteps (Lugmayr et al. 2022, Alg. 1; their get_schedule_jump):
    0 is x_T, n is clean data. Down one position at a time; every ``jump_length`` positions from the clean end it
    goes back up ``jump_length`` positions, ``jump_n_sample - 1`` times, resampling the stretch in between."""
    jumps = {j: jump_n_sample - 1 for j in range(0, n - jump_length, jump_length)}
    t, path = n, []
    while t >= 1:
        t -= 1
        path.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                path.append(t)
    path.append(-1)
    return [n - 1 - t for t in path]


def repaint(denoise, image, mask, ts, alphas_cumprod, rng, jump_length=10, jump_n_sample=10, callback=None):
    """RePaint (Lugmayr et al. 2022): DDPM's ancestral steps over ``ts`` with the known pixels replaced by the
    noised original after each step, and resampling: jumping back up the chain (x_t ~ q(x_t | x_s), the forward
    process between two visited levels) so that the filled-in part harmonises with the known part.
    ``jump_length`` and ``jump_n_sample`` as in the paper (1 and 1: plain DDPM inpainting). Returns [B,C,H,W].
    ``callback`` sees each reverse step's record (:func:`ddpm_ms.samplers.step_record`)."""
    image = np.asarray(image, np.float32)
    mask = np.broadcast_to(np.asarray(mask, np.float32), image.shape)
    ab = np.asarray(alphas_cumprod, np.float64)
    n = len(ts)
    x = rng.standard_normal(image.shape, dtype=np.float32)
    path = repaint_schedule(n, jump_length, jump_n_sample)
    for i, (k, nxt) in enumerate(zip(path[:-1], path[1:])):
        a_k, a_next = _alpha_bar_at(ab, ts, k), _alpha_bar_at(ab, ts, nxt)
        if nxt > k:    # a reverse step, position k -> k + 1: the posterior q(x_s | x_t, x0_pred) (eq. 6-7)
            x0, eps = denoise(x, ts[k])
            beta = 1.0 - a_k / a_next
            mean = (np.sqrt(a_next) * beta * x0 + np.sqrt(1.0 - beta) * (1.0 - a_next) * x) / (1.0 - a_k)
            std = np.sqrt(beta * (1.0 - a_next) / (1.0 - a_k))
            unknown = mean + std * rng.standard_normal(x.shape, dtype=np.float32)
            x_new = (mask * _known_at(image, a_next, rng) + (1.0 - mask) * unknown).astype(np.float32)
            if callback is not None:
                callback({"i": i, "t": int(ts[k]), "x_t": x, "x0": x0, "eps": eps, "x": x_new})
            x = x_new
        else:          # a jump back, position k -> k - 1: x_t ~ N(sqrt(a_t / a_s) x_s, (1 - a_t / a_s) I)
            r = a_next / a_k
            x = (np.sqrt(r) * x + np.sqrt(1.0 - r) * rng.standard_normal(x.shape, dtype=np.float32)).astype(
                np.float32)
    return x


def sdedit(denoise, image, strength, alphas_cumprod, rng, sampler="ddim", steps=None, spacing="uniform",
           callback=None, **options):
    """SDEdit (Meng et al. 2022): noise ``image`` to level strength * T and denoise it from there with ``sampler``.

    The sampler makes ``steps`` (default: its own) network calls at full strength and proportionally fewer below.
    Strength 0 returns the image; strength 1 starts from the first draw of ``rng`` alone, which is unconditional
    sampling from that noise. Returns [B,C,H,W].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    image = np.asarray(image, np.float32)
    ab = np.asarray(alphas_cumprod, np.float64)
    T = len(ab)  # pylint: disable=invalid-name
    level = int(round(strength * T))
    z = rng.standard_normal(image.shape, dtype=np.float32)
    if level == 0:
        return image.copy()
    full = steps or default_steps(sampler, T)
    ts = timesteps(ab[:level], max(1, min(level, int(np.ceil(full * level / T)))), spacing)
    a = ab[level - 1]
    x = z if level == T else (np.sqrt(a) * image + np.sqrt(1.0 - a) * z).astype(np.float32)
    return SAMPLERS[sampler].fn(denoise, x, ts, ab, rng, callback=callback, **options)


def slerp(z0, z1, alpha):
    """Spherical interpolation between two noises at ``alpha`` in [0, 1] (the angle between them, flattened)."""
    a, b = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    if theta < 1e-6:
        return ((1 - alpha) * a + alpha * b).astype(np.float32)
    return ((np.sin((1 - alpha) * theta) * a + np.sin(alpha * theta) * b) / np.sin(theta)).astype(np.float32)


def interpolate(denoise, z0, z1, k, alphas_cumprod, sampler="ddim", steps=None, spacing="uniform", denoise_at=None):
    """``k`` images [k, C, H, W] decoded from slerp(z0, z1, alpha) at alpha = 0, 1/(k-1), ..., 1 (z0, z1
    [1, C, H, W]) with a deterministic ``sampler`` (ddim at eta 0, or dpm++2m), so the ends are exactly the
    samples of z0 and of z1. ``denoise_at(alpha)``, if given, is the denoiser for image alpha (for a conditional
    model, the predictions for its two labels mixed by alpha), else ``denoise`` for all."""
    if k < 2:
        raise ValueError(f"interpolation needs k >= 2 images, got {k}")
    if sampler not in ("ddim", "dpm++2m"):
        raise ValueError(f"interpolation needs a deterministic sampler (ddim or dpm++2m), got {sampler!r}")
    ab = np.asarray(alphas_cumprod, np.float64)
    ts = timesteps(ab, steps or default_steps(sampler, len(ab)), spacing)
    alphas = np.linspace(0.0, 1.0, k)
    x = np.concatenate([slerp(z0, z1, a) for a in alphas])
    if denoise_at is None:
        chain = denoise
    else:
        per = [denoise_at(a) for a in alphas]

        def chain(x_t, t):
            outs = [d(x_t[j:j + 1], t) for j, d in enumerate(per)]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    options = {"eta": 0.0} if sampler == "ddim" else {}
    return SAMPLERS[sampler].fn(chain, x, ts, ab, np.random.default_rng(0), **options)


def mix_labels(denoiser, y0, y1, guidance):
    """``denoise_at(alpha)`` for :func:`interpolate` on a class-conditional Denoiser: the guided predictions for
    labels y0 and y1 mixed as (1 - alpha) out(y0) + alpha out(y1) (linear, like guidance itself)."""
    def at(alpha):
        def denoise(x_t, t):
            a0, e0 = denoiser(x_t, t, labels=np.full(len(x_t), y0), guidance=guidance)
            if alpha == 0.0:
                return a0, e0
            a1, e1 = denoiser(x_t, t, labels=np.full(len(x_t), y1), guidance=guidance)
            return (1 - alpha) * a0 + alpha * a1, (1 - alpha) * e0 + alpha * e1
        return denoise
    return at
