"""The compiled train step and the one factory that builds a run from a Config."""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Tensor, amp, nn, ops

from .config import ConfigError
from .diffusion import p_losses
from .ema import EMA
from .model import Unet
from .schedule import NoiseSchedule


class TrainStep:
    """value_and_grad + DynamicLossScaler + optimizer, optionally under ``ms.jit``.

    ``step(x0 [B,C,H,W], t [B] int32, noise [B,C,H,W], y=None)`` -> (loss, grads_finite);
    ``y`` [B] int32 class labels for a class-conditional model.
    The loss is scaled before differentiation, the grads unscaled, the update
    skipped when any grad is inf/nan, and the scale adjusted (halved on
    overflow, doubled after ``scale_window`` finite steps). With ``world_size`` > 1
    (under msrun) the grads are averaged across ranks before all of that.
    """

    def __init__(self, model, sched, optimizer, loss_scaler, loss_type="huber", jit=True, world_size=1):
        self.model = model
        model.set_train(True)   # training kernels (see model.GroupNorm)
        self.sched = sched
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler

        def forward(x0, t, noise, y):
            loss = p_losses(sched, model, x0, t, noise, loss_type, y)
            return loss_scaler.scale(loss), loss

        grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)
        reducer = (nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=world_size)
                   if world_size > 1 else None)
        all_reduce = ops.AllReduce() if world_size > 1 else None

        def gradients(x0, t, noise, y):
            (_, loss), grads = grad_fn(x0, t, noise, y)
            if reducer is not None:   # average grads (and the reported loss) over the msrun workers
                grads = reducer(grads)
                loss = all_reduce(loss) / world_size
            return loss, loss_scaler.unscale(grads)

        def step(x0, t, noise, y):
            loss, grads = gradients(x0, t, noise, y)
            grads_finite = all_finite(grads)
            if grads_finite:  # compiled to a graph switch under ms.jit
                optimizer(grads)
            loss_scaler.adjust(grads_finite)
            return loss, grads_finite

        self._step = ms.jit(step) if jit else step
        self._gradients = ms.jit(gradients) if jit else gradients

    def __call__(self, x0, t, noise, y=None):
        return self._step(x0, t, noise, y)

    def gradients(self, x0, t, noise, y=None):
        """(loss, grads) that ``step`` would apply, without applying them: the unscaled gradients (averaged over
        the msrun workers), one per ``optimizer.parameters`` entry; changes no state."""
        return self._gradients(x0, t, noise, y)


def all_finite(grads):
    """Scalar bool Tensor: every entry of every gradient is finite.

    One IsFinite over the concatenated gradients: ``amp.all_finite`` runs two ops per gradient, about 300 small
    ops per step on the tutorial U-Net, and at this size each op costs tens of microseconds of dispatch on CPU.
    """
    return ops.isfinite(ops.concat([g.reshape(-1) for g in grads])).all()


def step_noise(seed, step, shape, timesteps, rank=0):
    """(t [B] int32, noise [B,C,H,W] float32) for a global step, derived from (seed, step[, rank]).

    Drawing them from the step number makes a resumed run replay exactly; each rank draws its own.
    """
    rng = np.random.default_rng([seed, step] if rank == 0 else [seed, step, 0, rank])
    t = rng.integers(0, timesteps, size=(shape[0],), dtype=np.int32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    return Tensor(t), Tensor(noise)


def drop_labels(seed, step, labels, drop_prob, null_class):
    """Classifier-free guidance training: replace each label by ``null_class`` with probability drop_prob.

    labels [B] int -> [B] int32 Tensor; the draw is a function of (seed, step), like step_noise.
    """
    rng = np.random.default_rng([seed, step, 1])
    labels = np.asarray(labels, np.int32)
    return Tensor(np.where(rng.random(labels.shape) < drop_prob, np.int32(null_class), labels))


def mixed_precision(model, level):
    """The network the train step runs at ``level`` (mindspore.amp O0..O3) over the float32 ``model``.

    The Parameters stay the model's float32 ones (the optimizer's master weights, what checkpoints hold); O1-O3
    compute in float16, where the loss scaler matters. On CPU only what works is allowed (ConfigError otherwise):
    MindSpore's O1 rewrite fails there, and O2/O3 need MindSpore's own ops (``DDPM_MS_KERNELS=off``: the CPU
    kernel library is float32), which run float16 slower than float32 on CPU.
    """
    if level == "O0":
        return model
    if ms.get_context("device_target") == "CPU":
        if level == "O1":
            raise ConfigError("train.amp O1 does not run on CPU (MindSpore's O1 rewrite fails there): use O0, "
                              "or O2/O3 on GPU or Ascend")
        if any(getattr(cell, "fast", None) is not None for _, cell in model.cells_and_names()):
            raise ConfigError(f"train.amp {level} on CPU needs DDPM_MS_KERNELS=off (the CPU kernels are float32), "
                              "and float16 is slower than float32 there: use O0 on CPU")
    return amp.auto_mixed_precision(model, level)


def build_model(model_cfg):
    """Unet from a ModelConfig: the one place config becomes keyword arguments."""
    return Unet(**vars(model_cfg))


def build_schedule(diffusion_cfg):
    """NoiseSchedule from a DiffusionConfig."""
    d = diffusion_cfg
    return NoiseSchedule.from_name(d.beta_schedule, d.timesteps, d.beta_start, d.beta_end,
                                   p2_gamma=d.p2_gamma, p2_k=d.p2_k)


def lr_schedule(train_cfg, steps_per_epoch):
    """The tutorial's per-step LR list: nn.cosine_decay_lr(min_lr, lr, epochs*steps, steps, epochs)."""
    t = train_cfg
    return nn.cosine_decay_lr(min_lr=t.min_lr, max_lr=t.lr, total_step=t.epochs * steps_per_epoch,
                              step_per_epoch=steps_per_epoch, decay_epoch=t.epochs)


@dataclass
class Run:
    """Everything a training run needs, built from one Config."""
    model: Unet
    sched: NoiseSchedule
    optimizer: nn.Optimizer
    loss_scaler: amp.DynamicLossScaler
    step: TrainStep
    lrs: list
    ema: Optional[EMA]


def build_run(cfg, steps_per_epoch, world_size=1):
    """Model, schedule, Adam with cosine-decay LR, loss scaler, compiled step and EMA from a Config.

    Every rank seeds the same, so all start from the same parameters. With
    ``train.lr_scaling: linear`` the LR is multiplied by ``world_size``.
    """
    ms.set_seed(cfg.train.seed)
    model = build_model(cfg.model)
    sched = build_schedule(cfg.diffusion)
    scale = world_size if cfg.train.lr_scaling == "linear" else 1
    lrs = [lr * scale for lr in lr_schedule(cfg.train, steps_per_epoch)]
    optimizer = nn.Adam(model.trainable_params(), learning_rate=lrs)
    scaler = amp.DynamicLossScaler(cfg.train.loss_scale, cfg.train.scale_factor, cfg.train.scale_window)
    step = TrainStep(mixed_precision(model, cfg.train.amp), sched, optimizer, scaler, cfg.diffusion.loss_type,
                     jit=cfg.train.jit, world_size=world_size)
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    return Run(model, sched, optimizer, scaler, step, lrs, ema)
