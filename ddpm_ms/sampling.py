"""Reverse-process samplers as plain functions with one signature (k-diffusion style).

    sampler(eps_model, sched, shape, seed=0, x_T=None, steps=None, eta=..., return_all=False,
            progress=True, jit=True, clip_denoised=True, cond=()) -> ndarray

``eps_model(x [B,C,H,W], t [B] int32, *cond) -> eps``; ``cond`` (default ``()``) holds extra Tensors
such as the labels and guidance weight of :func:`guided_eps`. One compiled step (``t``, the per-step
coefficients and ``cond`` as Tensor inputs) serves every step; it is kept on ``eps_model``, so later
calls and batches of the same shape reuse the compiled graph instead of compiling again. Noise comes from a
seeded numpy Generator on the host, so the same seed gives the same images in
GRAPH and PYNATIVE modes. Each returns x_0 [B,C,H,W] float32, or with
``return_all`` every step's output stacked as [S, B, C, H, W] (last = x_0).

``clip_denoised`` (improved-diffusion's default) clips each step's predicted x_0 to [-1, 1]; without
it (the tutorial's eq. 11 update) an imperfect model's chain can drift far outside the data range.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from tqdm.auto import tqdm

from .diffusion import clipped_start_and_noise, p_mean, p_mean_clipped, predict_start_from_noise
from .schedule import extract, timestep_tensor


def _once(obj, key, make):
    """``make()``, built once per (obj, key) and kept on ``obj`` (a model or eps function).

    Objects that cannot hold attributes get a fresh ``make()`` on every call.
    """
    if not hasattr(obj, "__dict__"):
        return make()
    cache = vars(obj).setdefault("_ddpm_ms_sampling_cache", {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def compile_step(build, eps_model, sched, clip_denoised, jit=True):
    """The step ``build(eps_model, sched, clip_denoised)``, compiled with ms.jit when ``jit``.

    The one place samplers choose compiled or eager. A compiled step is cached on ``eps_model`` per
    (builder, schedule, clip), so later calls and batches reuse it and MindSpore compiles each input
    shape once. The graph reads the model's Parameters, so it sees new weights that are assigned in
    place (training, the EMA swap, checkpoint loading: see :mod:`ddpm_ms.params`). The step holds
    ``sched``, so its id stays unique while cached.
    """
    if not jit:
        return build(eps_model, sched, clip_denoised)
    return _once(eps_model, (build.__name__, id(sched), clip_denoised),
                 lambda: ms.jit(build(eps_model, sched, clip_denoised)))


def _start(shape, seed, x_T):
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal(shape, dtype=np.float32)) if x_T is None else Tensor(x_T, ms.float32)
    return rng, x


def _loop(step, x, plan, rng, shape, return_all, progress, desc, cond):
    """Run ``step(x, *coeffs, z, *cond)`` over ``plan`` (a list of coefficient tuples), drawing z each step."""
    frames = []
    for coeffs in tqdm(plan, desc=desc, disable=not progress, leave=False):
        z = Tensor(rng.standard_normal(shape, dtype=np.float32))
        x = step(x, *coeffs, z, *cond)
        if return_all:
            frames.append(x.asnumpy())
    return np.stack(frames) if return_all else x.asnumpy()


def _ddpm_step(eps_model, sched, clip_denoised):
    """x_{t-1} = mu_theta(x_t, t) + noise_scale * sigma_t z: eq. 11, or eq. 7 with the clipped x_0."""
    mean_fn = p_mean_clipped if clip_denoised else p_mean

    def ddpm_step(x_t, t, noise_scale, z, *cond):
        mean = mean_fn(sched, x_t, t, eps_model(x_t, t, *cond))
        return mean + noise_scale * extract(sched.posterior_std, t, x_t.shape) * z   # sigma_0 = 0

    return ddpm_step


def p_sample_loop(eps_model, sched, shape, seed=0, x_T=None, steps=None, eta=1.0, return_all=False,
                  progress=True, jit=True, clip_denoised=True, cond=()):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2): x_{t-1} = mu_theta(x_t, t) + eta * sigma_t z.

    Always runs all T steps (``steps`` must be None or T). ``eta=0`` is the
    no-extra-noise ablation: the same means, with the noise term zeroed.
    """
    if steps not in (None, sched.num_timesteps):
        raise ValueError(f"DDPM runs all {sched.num_timesteps} steps; use the DDIM sampler for {steps}")
    rng, x = _start(shape, seed, x_T)
    noise_scale = Tensor(np.float32(eta))
    plan = [(timestep_tensor(i, shape[0]), noise_scale) for i in reversed(range(sched.num_timesteps))]
    step = compile_step(_ddpm_step, eps_model, sched, clip_denoised, jit)
    return _loop(step, x, plan, rng, shape, return_all, progress, "DDPM sampling", cond)


def ddim_timesteps(num_timesteps, steps):
    """Evenly spaced sub-sequence tau of 0..T-1 with ``steps`` entries, descending, ending at 0."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_timesteps}], got {steps}")
    return np.unique(np.linspace(0, num_timesteps - 1, steps).round().astype(np.int64))[::-1]


def ddim_coefficients(sched, steps, eta):
    """Per DDIM step (t, alpha_bar_t, alpha_bar_prev, sigma_t), float64, following Song et al. 2021 eq. 16.

    sigma_t = eta * sqrt((1 - a_prev)/(1 - a_t)) * sqrt(1 - a_t/a_prev); a_prev = 1 after the last step.
    """
    taus = ddim_timesteps(sched.num_timesteps, steps)
    ab = sched.np["alphas_cumprod"]
    out = []
    for k, t in enumerate(taus):
        a_t = ab[t]
        a_prev = ab[taus[k + 1]] if k + 1 < len(taus) else 1.0
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
        out.append((int(t), a_t, a_prev, sigma))
    return out


def _start_and_noise(sched, x_t, t, eps):
    """(x_0 predicted by eq. 4, eps) unclipped."""
    return predict_start_from_noise(sched, x_t, t, eps), eps


def _ddim_step(eps_model, sched, clip_denoised):
    """x_prev = sqrt(a_prev) x0_pred + dir_coef eps + sigma z   (Song et al. 2021, eq. 12)."""
    start_and_noise = clipped_start_and_noise if clip_denoised else _start_and_noise

    def ddim_step(x_t, t, sqrt_a_prev, dir_coef, sigma, z, *cond):
        x0, eps = start_and_noise(sched, x_t, t, eps_model(x_t, t, *cond))
        return sqrt_a_prev * x0 + dir_coef * eps + sigma * z

    return ddim_step


def ddim_sample_loop(eps_model, sched, shape, seed=0, x_T=None, steps=50, eta=0.0, return_all=False,
                     progress=True, jit=True, clip_denoised=True, cond=()):
    """DDIM sampling (Song et al. 2021, eq. 12) over ``steps`` evenly spaced timesteps.

    x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma z. Deterministic at eta=0;
    with steps=T and eta=1 it is DDPM's ancestral step.
    """
    steps = 50 if steps is None else steps
    rng, x = _start(shape, seed, x_T)

    def scalar(v):
        return Tensor(np.float32(v))

    plan = [(timestep_tensor(t, shape[0]), scalar(np.sqrt(a_prev)),
             scalar(np.sqrt(max(1 - a_prev - sigma ** 2, 0.0))), scalar(sigma))
            for t, _, a_prev, sigma in ddim_coefficients(sched, steps, eta)]
    step = compile_step(_ddim_step, eps_model, sched, clip_denoised, jit)
    return _loop(step, x, plan, rng, shape, return_all, progress, "DDIM sampling", cond)


def ddpm_no_noise_loop(eps_model, sched, shape, seed=0, x_T=None, steps=None, eta=0.0, return_all=False,
                       progress=True, jit=True, clip_denoised=True, cond=()):
    """The ablation: DDPM's means with no noise added back at any step (eta is ignored)."""
    del eta
    return p_sample_loop(eps_model, sched, shape, seed, x_T, steps, 0.0, return_all, progress, jit, clip_denoised,
                         cond)


SAMPLERS = {"ddpm": p_sample_loop, "ddim": ddim_sample_loop, "ddpm-no-noise": ddpm_no_noise_loop}


def guided_eps(model, null_class):
    """The classifier-free-guidance eps function of a class-conditional ``model``, made once per model.

    eps(x [B,C,H,W], t [B], y [B] int32, w [] float32) -> eps_u + w (eps_c - eps_u) (Ho & Salimans 2022),
    both from one batched call of ``model``; w=0 is unconditional (label ``null_class``), w=1 conditional.
    Call it as ``eps(x, t, *guidance_cond(y, w))``, or pass ``cond=guidance_cond(y, w)`` to a sampler.
    A plain function, not a Cell: a Cell holding ``model`` would rename its parameters ("model.<name>").
    """
    def eps(x, t, y, w):
        y_both = ops.concat((y, ops.full_like(y, null_class)))
        eps_c, eps_u = ops.chunk(model(ops.concat((x, x)), ops.concat((t, t)), y_both), 2, 0)
        return eps_u + w * (eps_c - eps_u)

    return _once(model, ("cfg", null_class), lambda: eps)


def guidance_cond(y, guidance):
    """The ``cond`` Tensors of :func:`guided_eps`: labels y [B] -> (y int32 [B], w float32 [])."""
    return Tensor(np.asarray(y, np.int32)), Tensor(np.float32(guidance))


def sample(eps_model, sched, image_size, batch_size=16, channels=3, seed=0, sampler="ddpm", steps=None, eta=None,
           return_all=False, progress=True, jit=True, clip_denoised=True):
    """Sample ``batch_size`` square images [B, channels, S, S] in about [-1, 1] with a named sampler.

    With ``return_all`` returns every step instead: [S, B, channels, S, S].
    """
    out = generate(eps_model, sched, (channels, image_size, image_size), batch_size, seed=seed,
                   batch_size=batch_size, sampler=sampler, steps=steps, eta=eta, frames=return_all,
                   progress=progress, jit=jit, clip_denoised=clip_denoised)
    return out[1] if return_all else out


def batch_plan(num, batch_size):
    """(count, size): ``num`` images in ``count`` batches of one ``size`` <= ``batch_size``.

    One shape for every batch means one compiled step; the last batch is padded (extra images dropped).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"need num >= 1 and batch_size >= 1, got {num} and {batch_size}")
    count = -(-num // batch_size)
    return count, -(-num // count)


def generate(model, sched, image_shape, num, seed=0, batch_size=64, sampler="ddpm", steps=None, eta=None,
             labels=None, guidance=1.0, null_class=None, frames=False, progress=True, jit=True, clip_denoised=True):
    """Sample ``num`` images [num, C, H, W] in equal batches (:func:`batch_plan`); batch i uses seed + i.

    ``labels`` [num] int with ``guidance`` w and ``null_class`` samples a class-conditional model with
    classifier-free guidance. With ``frames`` also returns the first batch's steps [S, B, C, H, W].
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    kwargs = {} if eta is None else {"eta": eta}
    eps_model = model if labels is None else guided_eps(model, null_class)
    count, size = batch_plan(num, batch_size)
    if labels is not None:
        if len(labels) < num:
            raise ValueError(f"need a label for each of the {num} images, got {len(labels)}")
        labels = np.resize(np.asarray(labels)[:num], count * size)    # the padding repeats the first labels
    chunks, first_frames = [], None
    for i in range(count):
        cond = () if labels is None else guidance_cond(labels[i * size:(i + 1) * size], guidance)
        want = frames and i == 0
        x = SAMPLERS[sampler](eps_model, sched, (size, *image_shape), seed=seed + i, steps=steps, return_all=want,
                              progress=progress, jit=jit, clip_denoised=clip_denoised, cond=cond, **kwargs)
        if want:
            first_frames, x = x, x[-1]
        chunks.append(x)
    images = np.concatenate(chunks)[:num]
    return (images, first_frames) if frames else images
