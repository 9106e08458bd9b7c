"""The compiled train step: value_and_grad + DynamicLossScaler + optimizer under ``ms.jit``."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, amp, nn, ops

from .device import ensure_fast_cpu_settings
from .diffusion import loss_named, objective_named, p_losses
from .errors import ConfigError


class TrainStep:
    """value_and_grad + DynamicLossScaler + optimizer, optionally under ``ms.jit``.

    ``step(x0 [B,C,H,W], t [B] int32, noise [B,C,H,W], y=None)`` -> (loss, grads_finite);
    ``y`` [B] int32 class labels for a class-conditional model. The model regresses ``objective``'s target
    (eps, x0 or v) with ``loss_type``, weighted per timestep by ``weights`` [T] (None: unweighted). The caller
    puts the model in training mode (``model.set_train(True)``) before stepping.
    The loss is scaled before differentiation, the grads unscaled, the update
    skipped when any grad is inf/nan, and the scale adjusted (halved on
    overflow, doubled after ``scale_window`` finite steps). With ``world_size`` > 1
    (under msrun) the grads are averaged across ranks before all of that.
    """

    def __init__(self, model, sched, optimizer, loss_scaler, loss_type="huber", jit=True, world_size=1,
                 objective="eps", weights=None):
        ensure_fast_cpu_settings()
        self.model = model
        self.sched = sched
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler
        loss_fn, target = loss_named(loss_type), objective_named(objective)   # resolved once, outside the graph
        weights = None if weights is None else Tensor(np.asarray(weights, np.float32))

        def forward(x0, t, noise, y):
            loss = p_losses(sched, model, x0, t, noise, loss_fn, y, target, weights)
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
