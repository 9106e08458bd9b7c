"""The compiled train step: value_and_grad + DynamicLossScaler + optimizer under ``ms.jit``."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, amp, nn, ops

from . import kernels
from .device import ensure_fast_cpu_settings
from .diffusion import loss_named, objective_named, p_losses
from .errors import ConfigError
from .kernels import ops as kernel_ops


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

    On CPU with the kernel library, an ``nn.Adam`` step (unscale, overflow check, skip, Adam) is one kernel over all
    parameters (:func:`fused_adam`; ``fused`` says whether this step uses it); otherwise MindSpore's ops do it.
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

        def scaled_gradients(x0, t, noise, y):
            (_, loss), grads = grad_fn(x0, t, noise, y)
            if reducer is not None:   # average grads (and the reported loss) over the msrun workers
                grads = reducer(grads)
                loss = all_reduce(loss) / world_size
            return loss, grads

        def gradients(x0, t, noise, y):
            loss, grads = scaled_gradients(x0, t, noise, y)
            return loss, loss_scaler.unscale(grads)

        def ops_update(grads):   # MindSpore's ops: unscale, check, and step only if every gradient is finite
            grads = loss_scaler.unscale(grads)
            grads_finite = all_finite(grads)
            if grads_finite:  # compiled to a graph switch under ms.jit
                optimizer(grads)
            return grads_finite

        fused = fused_adam(optimizer, loss_scaler)
        self.fused = fused is not None
        update = fused if self.fused else ops_update

        def step(x0, t, noise, y):
            loss, grads = scaled_gradients(x0, t, noise, y)
            grads_finite = update(grads)
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


def fused_adam(optimizer, loss_scaler):
    """``update(scaled_grads) -> grads_finite`` (a scalar bool Tensor): one :func:`~ddpm_ms.kernels.ops.adam_step`
    kernel doing what ``if all_finite(unscale(g)): optimizer(unscale(g))`` does, with ``optimizer.global_step``
    advanced only on a finite step; or None where that kernel does not apply (not a plain float32 ``nn.Adam`` with
    a ``DynamicLossScaler``, or no kernel library: GPU, Ascend, ``DDPM_MS_KERNELS=off``). The optimizer's
    Parameters (moments, beta powers, step) stay its own, so checkpoints are the same on both paths.
    """
    plain = (type(optimizer) is nn.Adam and isinstance(loss_scaler, amp.DynamicLossScaler)  # pylint: disable=unidiomatic-typecheck
             and not optimizer.use_nesterov and not optimizer.is_group and not optimizer.use_offload
             and not optimizer.use_amsgrad and not optimizer.use_lazy and not optimizer.exec_weight_decay
             and not optimizer.need_scale
             and all(p.dtype == ms.float32 for p in optimizer.parameters))
    lib = kernels.library() if plain else None
    if lib is None:
        return None
    op = kernel_ops.adam_step(lib)
    w, m, v = tuple(optimizer.parameters), tuple(optimizer.moment1), tuple(optimizer.moment2)

    def update(grads):
        hyper = ops.concat([optimizer.get_lr().reshape(1), optimizer.beta1.reshape(1), optimizer.beta2.reshape(1),
                            optimizer.eps.reshape(1), loss_scaler.scale_value.reshape(1)])
        finite = op(*w, *m, *v, *grads, optimizer.beta1_power, optimizer.beta2_power, hyper)
        ops.assign_add(optimizer.global_step, finite.astype(ms.int32))
        return (finite > 0.5).reshape(())

    return update


def all_finite(grads):
    """Scalar bool Tensor: every entry of every gradient is finite (MindSpore's ``amp.all_finite``: on Ascend its
    float-status check). The CPU kernel path does this inside its one optimizer op instead.

    Not one IsFinite over the concatenated gradients: that runs fewer ops, but a Concat of ~150 inputs takes about
    10 s to compile, ``amp.all_finite`` about 1 s.
    """
    return amp.all_finite(grads)


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
