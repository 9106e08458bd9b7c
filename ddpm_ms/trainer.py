"""The compiled train step and the one factory that builds a run from a Config."""
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, amp, nn

from .diffusion import p_losses
from .model import Unet
from .schedule import NoiseSchedule


class TrainStep:
    """value_and_grad + DynamicLossScaler + optimizer, optionally under ``ms.jit``.

    ``step(x0 [B,C,H,W], t [B] int32, noise [B,C,H,W])`` -> (loss, grads_finite).
    The loss is scaled before differentiation, the grads unscaled, the update
    skipped when any grad is inf/nan, and the scale adjusted (halved on
    overflow, doubled after ``scale_window`` finite steps).
    """

    def __init__(self, model, sched, optimizer, loss_scaler, loss_type="huber", jit=True):
        self.model = model
        self.sched = sched
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler

        def forward(x0, t, noise):
            loss = p_losses(sched, model, x0, t, noise, loss_type)
            return loss_scaler.scale(loss), loss

        grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)

        def step(x0, t, noise):
            (_, loss), grads = grad_fn(x0, t, noise)
            grads = loss_scaler.unscale(grads)
            grads_finite = amp.all_finite(grads)
            if grads_finite:  # compiled to a graph switch under ms.jit
                optimizer(grads)
            loss_scaler.adjust(grads_finite)
            return loss, grads_finite

        self._step = ms.jit(step) if jit else step

    def __call__(self, x0, t, noise):
        return self._step(x0, t, noise)


def step_noise(seed, step, shape, timesteps):
    """(t [B] int32, noise [B,C,H,W] float32) for a global step, derived from (seed, step).

    Drawing them from the step number makes a resumed run replay exactly.
    """
    rng = np.random.default_rng([seed, step])
    t = rng.integers(0, timesteps, size=(shape[0],), dtype=np.int32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    return Tensor(t), Tensor(noise)


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


def build_run(cfg, steps_per_epoch):
    """Model, schedule, Adam with cosine-decay LR, loss scaler and compiled step from a Config."""
    ms.set_seed(cfg.train.seed)
    model = build_model(cfg.model)
    sched = build_schedule(cfg.diffusion)
    lrs = lr_schedule(cfg.train, steps_per_epoch)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=lrs)
    scaler = amp.DynamicLossScaler(cfg.train.loss_scale, cfg.train.scale_factor, cfg.train.scale_window)
    step = TrainStep(model, sched, optimizer, scaler, cfg.diffusion.loss_type, jit=cfg.train.jit)
    return Run(model, sched, optimizer, scaler, step, lrs)
