"""Factories: every "config -> object" step of ddpm_ms, in one module.

The objects they build take plain arguments and know nothing of configs; this module is the only one that
reads a :class:`~ddpm_ms.config.Config` field to build something (the commands read their own flags).

    run = build_run(cfg, steps_per_epoch)              # model, schedule, Adam, scaler, compiled step, EMA
    model, sched, cfg, data = load_model("runs/fashion_cpu/ckpt_step00009360.ckpt")
"""
import time
from dataclasses import dataclass
from typing import Optional

import mindspore as ms
from mindspore import amp, nn

from . import callbacks as cb
from . import checkpoint as ckpt
from . import lr as lr_mod
from .batches import BatchSource
from .data import check_data_fits_model, resolve_fashion_dir
from .diffusion import loss_weights
from .distributed import PeerWatch
from .ema import EMA
from .errors import ConfigError
from .model import Unet
from .registries import LOSS_WEIGHTINGS
from .monitor import Previewer, QualityProbe
from .run_folder import RunFolder
from .samplers import Guidance
from .sampling import Denoiser
from .schedule import NoiseSchedule
from .train_step import TrainStep, mixed_precision


def build_model(model_cfg):
    """Unet from a ModelConfig: the one place config becomes its keyword arguments."""
    return Unet(**vars(model_cfg))


def build_schedule(diffusion_cfg):
    """NoiseSchedule from a DiffusionConfig."""
    d = diffusion_cfg
    return NoiseSchedule.from_name(d.beta_schedule, d.timesteps, d.beta_start, d.beta_end)


def build_loss_weights(sched, diffusion_cfg):
    """The per-timestep loss weights [T] float64 a DiffusionConfig asks for (diffusion.loss_weighting)."""
    d = diffusion_cfg
    params = {key: getattr(d, key) for key in LOSS_WEIGHTINGS[d.loss_weighting].params}   # the keys it reads
    return loss_weights(sched, d.objective, d.loss_weighting, **params)


def lr_schedule(train_cfg, steps_per_epoch, scale=1):
    """The LR Adam steps with: the tutorial's per-epoch cosine list, or for a budgeted run (train.minutes) the
    in-graph warm-up, hold and cosine of :mod:`ddpm_ms.lr` to train.max_steps (the plan; set later when not yet made).
    ``scale`` multiplies both LRs (train.lr_scaling)."""
    t = train_cfg
    if t.minutes is None:
        return [v * scale for v in lr_mod.tutorial_cosine(t.lr, t.min_lr, t.epochs, steps_per_epoch)]
    # a planned run starts in its first plan's cosine (train.earlier_plans, then train.decay_start; older plans:
    # at the warm-up's end; a resume's checkpoint brings the one in force); unplanned: LR held
    start, total, earlier = _lr_plan(t)
    return lr_mod.WarmupCosineLR(t.lr * scale, t.min_lr * scale, t.warmup_steps, total, start, earlier)


def _lr_plan(t):
    """(decay_start, total, earlier_plans) of a budgeted run's config (:func:`ddpm_ms.lr.segment_at`)."""
    start = t.decay_start if t.decay_start is not None else (t.warmup_steps if t.max_steps else lr_mod.HOLD)
    return start, t.max_steps or t.warmup_steps + 1, t.earlier_plans


def total_steps(train_cfg, steps_per_epoch):
    """Optimizer steps of a run: train.epochs epochs, capped by train.max_steps; a budgeted run: train.max_steps,
    or None until its plan is made."""
    if train_cfg.minutes is not None:
        return train_cfg.max_steps
    total = train_cfg.epochs * steps_per_epoch
    return min(total, train_cfg.max_steps) if train_cfg.max_steps else total


@dataclass
class Run:
    """Everything a training run steps with, built from one Config by :func:`build_run`."""
    model: Unet
    sched: NoiseSchedule
    optimizer: nn.Optimizer
    loss_scaler: amp.DynamicLossScaler
    train_step: TrainStep
    lr: object          # a per-step list, or a WarmupCosineLR
    ema: Optional[EMA]

    def lr_at(self, step):
        """The LR of 0-based ``step``."""
        if isinstance(self.lr, list):
            return float(self.lr[min(step, len(self.lr) - 1)])
        return self.lr.numpy(step)


def build_run(cfg, steps_per_epoch, world_size=1):
    """Model, schedule, Adam with cosine-decay LR, loss scaler, compiled step and EMA from a Config.

    Every rank seeds the same, so all start from the same parameters. With ``train.lr_scaling: linear`` the
    LR is multiplied by ``world_size``.
    """
    ms.set_seed(cfg.train.seed)
    model = build_model(cfg.model)
    sched = build_schedule(cfg.diffusion)
    scale = world_size if cfg.train.lr_scaling == "linear" else 1
    lr = lr_schedule(cfg.train, steps_per_epoch, scale)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=lr)
    t = cfg.train
    scaler = amp.DynamicLossScaler(t.loss_scale, t.scale_factor, t.scale_window)
    model.set_train(True)   # training kernels (see model.GroupNorm); the Previewer switches it off and back
    step = TrainStep(mixed_precision(model, t.amp), sched, optimizer, scaler, cfg.diffusion.loss_type, jit=t.jit,
                     world_size=world_size, objective=cfg.diffusion.objective,
                     weights=build_loss_weights(sched, cfg.diffusion))
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    return Run(model, sched, optimizer, scaler, step, lr, ema)


def build_previewer(run, cfg):
    """The Previewer of a run: its EMA weights, the config's sampler (train.sample_sampler/sample_steps)."""
    size, t = cfg.data.image_size, cfg.train
    denoiser = Denoiser.from_config(run.model, run.sched, cfg, jit=t.jit)
    return Previewer(run.model, denoiser, image_shape=(cfg.model.channels, size, size), sampler=t.sample_sampler,
                     steps=t.sample_steps, spacing=t.sample_spacing,
                     guidance=Guidance(t.guidance, t.guidance_interval),
                     num_classes=cfg.model.num_classes, ema=run.ema)


def build_probe(previewer, cfg):
    """The QualityProbe of train.eval_every (None when it is 0): FD/KID of train.eval_num samples."""
    if not cfg.train.eval_every:
        return None
    from .metrics import Evaluator  # pylint: disable=import-outside-toplevel  # trains its classifier on first use
    return QualityProbe(previewer, Evaluator(resolve_fashion_dir(cfg.data.root)), num=cfg.train.eval_num)


def build_callbacks(cfg, run, folder, is_main=True, peer_watch=None):
    """The training loop's callbacks for a Config, in the order they run (rank 0 gets the ones that write;
    ``peer_watch``: an msrun rank's :class:`~ddpm_ms.distributed.PeerWatch`, told when its steps are done).

    At the end, the last evaluation (and best.ckpt) come before the last checkpoint, so that the checkpoint's
    count of metrics rows includes it; a resume drops exactly the rows logged after its checkpoint.
    """
    t = cfg.train
    out = []
    if t.minutes is not None and t.max_steps is None:    # plans first, so the others see the planned total
        out.append(cb.Budget(t.minutes * 60.0, t.warmup_steps, run.lr, monitor_share=t.monitor_share,
                             measure_share=t.measure_share, replan_every=t.replan_every))
    elif t.minutes is not None and t.earlier_plans:     # a replayed plan that re-planned: its LR switches
        out.append(cb.LrSegments(run.lr, *_lr_plan(t)))
    out += [cb.PeerFinish(peer_watch)] if peer_watch is not None else []
    out += [cb.EMAUpdate(run.ema, every=cfg.ema.update_every)] if run.ema is not None else []
    if is_main:
        out.append(cb.MetricsLog(folder, every=t.log_every, lr_at=run.lr_at, loss_scaler=run.loss_scaler))
    out.append(cb.DivergenceStop(limit=t.max_nonfinite_steps, folder=folder))
    if not is_main:
        return out
    previewer = build_previewer(run, cfg)
    probe = build_probe(previewer, cfg)
    if probe is not None:
        out += [cb.Evaluation(probe, folder, every=t.eval_every), cb.BestCheckpoint(folder, margin=t.best_margin)]
    out += [cb.CheckpointPolicy(folder, every=t.ckpt_every),
            cb.PreviewGrids(previewer, folder, num=t.sample_num, gif=t.gif, every=t.preview_every)]
    return out + [cb.Curves(folder), cb.ProgressBar(None if t.minutes is None else t.minutes * 60.0)]


def trainer_parts(cfg, fresh=True, rank=0, world_size=1, overwrite=False, start_time=None):
    """The keyword arguments of :class:`ddpm_ms.trainer.Trainer` for a Config; ``fresh`` claims the run folder
    (``overwrite``: deleting another run's files), else the caller resumes into it. ``start_time``: when the
    run's wall clock starts (default now; the train command passes the process start)."""
    start = time.time() if start_time is None else start_time
    check_data_fits_model(cfg.data, cfg.model)
    t = cfg.train
    if t.minutes is not None and t.max_steps is None and world_size > 1:
        raise ConfigError("train.minutes plans a run on one process; under msrun replay a plan with "
                          "train.max_steps (from a single-process run's config.yaml)")
    folder = RunFolder(t.out_dir, t.keep_last, is_main=rank == 0)
    folder.claim()   # the lock first: nothing is read or deleted while another run may be writing
    if fresh:
        folder.open_fresh(overwrite)
    watch = None
    if world_size > 1:   # a rank that dies stops the others (one line) instead of hanging them in a collective
        watch = PeerWatch(t.out_dir, rank, world_size).start()
    batches = BatchSource(cfg.data, t.batch_size, t.seed, cfg.diffusion.timesteps, cfg.model.num_classes,
                          t.cond_drop_prob, rank, world_size)
    run = build_run(cfg, batches.steps_per_epoch, world_size)
    state = ckpt.TrainingState(cfg, run.model, run.optimizer, run.loss_scaler, run.ema)
    return dict(run=run, state=state, batches=batches, folder=folder,
                total_steps=total_steps(t, batches.steps_per_epoch),
                callbacks=build_callbacks(cfg, run, folder, is_main=rank == 0, peer_watch=watch), rank=rank,
                world_size=world_size, start_time=start)


def load_model(path, use_ema=True):
    """Rebuild the model a checkpoint was trained with and load its weights (EMA ones if stored and wanted).

    Returns (model, schedule, config, raw checkpoint dict); no architecture flags needed.
    """
    from .ema import PREFIX  # pylint: disable=import-outside-toplevel
    data = ckpt.read_checkpoint(path)
    cfg = ckpt.checkpoint_config(data, path)
    model = build_model(cfg.model)
    ckpt.load_model_weights(model, data, path, prefix=PREFIX if use_ema and ckpt.has_ema(data) else "")
    model.set_train(False)
    return model, build_schedule(cfg.diffusion), cfg, data
