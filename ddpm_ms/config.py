"""Typed run configuration: YAML in, validated dataclasses out.

Unknown keys are rejected with their full dotted name; values are checked
once here so the rest of the code can trust them. ``Config.to_dict()`` is what
is saved next to every checkpoint.
"""
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import yaml

from .errors import ConfigError
from .paths import save_text
from .registries import (AMP_LEVELS, BETA_SCHEDULES, BLOCK_TYPES, DATASETS, DEVICES, LOSS_WEIGHTINGS, LOSSES,
                         OBJECTIVES, SAMPLERS, SPACINGS)
from .samplers import interval_problem

__all__ = ["Config", "ConfigError", "ModelConfig", "DiffusionConfig", "DataConfig", "TrainConfig", "EMAConfig",
           "from_dict", "load_config", "parse_override", "validate"]


@dataclass
class ModelConfig:
    """U-Net architecture (keyword arguments of :class:`ddpm_ms.model.Unet`)."""
    dim: int = 28
    init_dim: Optional[int] = None
    out_dim: Optional[int] = None
    dim_mults: Tuple[int, ...] = (1, 2, 4)
    channels: int = 1
    with_time_emb: bool = True
    convnext_mult: int = 2
    block_type: str = "convnext"
    resnet_groups: int = 8
    num_classes: Optional[int] = None
    attn_heads: int = 4
    attn_dim_head: int = 32


@dataclass
class DiffusionConfig:
    """Noise schedule and training objective."""
    timesteps: int = 200
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    objective: str = "eps"              # what the network predicts: eps, x0 or v (registries.OBJECTIVES)
    loss_type: str = "huber"
    loss_weighting: str = "none"        # none, p2 (p2_gamma, p2_k), min_snr (min_snr_gamma) or edm (edm_*)
    p2_gamma: float = 0.0
    p2_k: float = 1.0
    min_snr_gamma: float = 5.0
    edm_p_mean: float = -1.2            # EDM's ln sigma ~ N(P_mean, P_std^2) and sigma_data (Karras et al. 2022)
    edm_p_std: float = 1.2
    edm_sigma_data: float = 0.5


@dataclass
class DataConfig:
    """Where the images come from and how they are fed."""
    dataset: str = "fashion_mnist"      # mnist, cifar10 or image_folder (registries.DATASETS)
    root: Optional[str] = None
    image_size: int = 28
    num_samples: Optional[int] = None   # a random subset of this many images (of index_range if given)
    index_range: Optional[Tuple[int, ...]] = None   # [start, stop): train only on these images of the file
    shuffle_buffer: int = 64
    random_flip: bool = True
    num_workers: int = 1


@dataclass
class TrainConfig:
    """Optimisation, loss scaling, logging and checkpointing.

    ``batch_size`` is per device: under msrun with N workers the global batch is N x batch_size.
    """
    batch_size: int = 16
    epochs: int = 10
    max_steps: Optional[int] = None
    lr: float = 1e-4
    min_lr: float = 1e-7
    loss_scale: float = 65536.0
    scale_factor: int = 2
    scale_window: int = 1000
    seed: int = 0
    jit: bool = True
    out_dir: str = "runs/fashion"
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    sample_num: int = 64
    sample_sampler: str = "ddpm"        # sampler of the per-epoch and final grids ("ddim", "dpm++2m": cheaper)
    sample_steps: Optional[int] = None  # its network calls (None: the sampler's default)
    sample_spacing: str = "uniform"     # its timesteps: uniform or logsnr
    gif: bool = True
    cond_drop_prob: float = 0.1
    guidance: float = 3.0
    guidance_interval: Optional[Tuple[int, ...]] = None   # [lo, hi]: guidance only on these timesteps (None: all)
    lr_scaling: str = "none"            # "linear": lr x number of msrun workers
    max_nonfinite_steps: int = 25       # stop (keeping the last good checkpoint) after this many in a row
    device: str = "auto"                # auto (MindSpore's default), CPU, GPU or Ascend
    amp: str = "O0"                     # mixed precision (mindspore.amp): O0 fp32, O1, O2, O3 (float16)
    eval_every: int = 0                 # epochs between FD/KID evaluations during training (0: none)
    eval_num: int = 1000                # samples per evaluation (drawn with sample_sampler/sample_steps)
    preview_every: int = 1              # epochs between sample grids
    best_margin: float = 0.0            # best.ckpt is replaced only by an FD lower by more than this fraction
    minutes: Optional[float] = None     # wall-time budget: the run plans its own max_steps (ddpm_ms.budget)
    warmup_steps: int = 200             # budgeted runs: LR warm-up steps (the speed is measured from then on)
    measure_share: float = 0.25         # budgeted runs: this share of the budget passes before the plan (LR held at lr)
    decay_start: Optional[float] = None  # budgeted runs: the cosine's start P (the plan's; None: warmup_steps)
    replan_every: float = 0.1           # budgeted runs: this share of the budget between re-plan checks (0: none)
    earlier_plans: Tuple[Tuple[float, ...], ...] = ()   # budgeted runs: [until_step, P, N] of plans a re-plan replaced
    monitor_share: float = 0.045        # budgeted runs: this share of the budget on evaluations and grids (5% with room)


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (used for sampling)."""
    enabled: bool = True
    decay: float = 0.995
    warmup: bool = True
    update_every: int = 1


@dataclass
class Config:
    """A whole run: model, diffusion, data, train and ema sections."""
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    def to_dict(self):
        """Plain nested dict (tuples as lists), YAML-safe."""
        return _plain(dataclasses.asdict(self))

    def dump(self, path):
        """Write the resolved config as YAML (atomically)."""
        save_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value, annotation, key):
    """Convert a YAML/CLI value to the field's type, or raise ConfigError naming ``key``."""
    optional = {Optional[int]: int, Optional[str]: str, Optional[float]: float,
                Optional[Tuple[int, ...]]: Tuple[int, ...]}
    if annotation == Tuple[Tuple[float, ...], ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(row, (list, tuple)) for row in value):
            raise ConfigError(f"config key '{key}' must be a list of lists of numbers, got {value!r}")
        return tuple(tuple(_coerce(v, float, key) for v in row) for row in value)
    if value is None:
        if annotation in optional:
            return None
        raise ConfigError(f"config key '{key}' must not be null")
    base = optional.get(annotation, annotation)
    if base == Tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise ConfigError(f"config key '{key}' must be a list of integers, got {value!r}")
        return tuple(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _section(cls, data, prefix):
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}.{key}' (known: {', '.join(fields)})")
    kwargs = {k: _coerce(v, fields[k].type, f"{prefix}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _check(cond, key, msg):
    if not cond:
        raise ConfigError(f"config key '{key}' {msg}")


def _one_of(value, registry, key):
    """ConfigError naming ``key`` unless ``value`` is a name in ``registry`` (a Registry or a tuple)."""
    names = registry.names() if hasattr(registry, "names") else tuple(registry)
    _check(value in names, key, f"must be one of {', '.join(names)}, got {value!r}")


def _check_model(m):
    _check(m.dim > 0, "model.dim", f"must be > 0, got {m.dim}")
    _check(len(m.dim_mults) > 0 and all(x > 0 for x in m.dim_mults), "model.dim_mults",
           f"must be a non-empty list of positive integers, got {list(m.dim_mults)}")
    _check(m.channels > 0, "model.channels", f"must be > 0, got {m.channels}")
    _one_of(m.block_type, BLOCK_TYPES, "model.block_type")
    _check(m.num_classes is None or m.num_classes > 1, "model.num_classes", f"must be > 1, got {m.num_classes}")
    _check(m.num_classes is None or m.with_time_emb, "model.num_classes",
           "needs model.with_time_emb: true (the class embedding is added to the time embedding)")
    _check(m.init_dim is None or m.init_dim > 0, "model.init_dim", f"must be > 0, got {m.init_dim}")
    _check(m.out_dim is None or m.out_dim > 0, "model.out_dim", f"must be > 0, got {m.out_dim}")
    _check(m.resnet_groups > 0, "model.resnet_groups", f"must be > 0, got {m.resnet_groups}")
    _check(m.attn_heads > 0 and m.attn_dim_head > 0, "model.attn_heads",
           f"attn_heads and attn_dim_head must be > 0, got {m.attn_heads}, {m.attn_dim_head}")
    _check(m.convnext_mult > 0, "model.convnext_mult", f"must be > 0, got {m.convnext_mult}")


def _check_diffusion(d):
    _check(d.timesteps > 1, "diffusion.timesteps", f"must be > 1, got {d.timesteps}")
    _one_of(d.beta_schedule, BETA_SCHEDULES, "diffusion.beta_schedule")
    _check(0 < d.beta_start < d.beta_end < 1, "diffusion.beta_end",
           f"needs 0 < beta_start < beta_end < 1, got {d.beta_start}, {d.beta_end}")
    default = DiffusionConfig()
    for key in ("beta_start", "beta_end"):
        _check(BETA_SCHEDULES[d.beta_schedule].beta_range or getattr(d, key) == getattr(default, key),
               f"diffusion.{key}", f"is not used by diffusion.beta_schedule={d.beta_schedule!r}: remove it "
                                   f"(got {getattr(d, key)})")
    _one_of(d.loss_type, LOSSES, "diffusion.loss_type")
    _one_of(d.objective, OBJECTIVES, "diffusion.objective")
    _one_of(d.loss_weighting, LOSS_WEIGHTINGS, "diffusion.loss_weighting")
    _check(d.min_snr_gamma > 0, "diffusion.min_snr_gamma", f"must be > 0, got {d.min_snr_gamma}")
    for key in ("edm_p_std", "edm_sigma_data"):
        _check(getattr(d, key) > 0, f"diffusion.{key}", f"must be > 0, got {getattr(d, key)}")
    for key in sorted({k for _, entry in LOSS_WEIGHTINGS.items() for k in entry.params}):
        _check(key in LOSS_WEIGHTINGS[d.loss_weighting].params or getattr(d, key) == getattr(default, key),
               f"diffusion.{key}",
               f"is not used by diffusion.loss_weighting={d.loss_weighting!r}: remove it (got {getattr(d, key)})")


def _check_data(data, m):
    _one_of(data.dataset, DATASETS, "data.dataset")
    down = 2 ** (len(m.dim_mults) - 1)
    _check(data.image_size > 0 and data.image_size % down == 0, "data.image_size",
           f"must be a positive multiple of {down} for the {len(m.dim_mults)} resolutions of model.dim_mults, "
           f"got {data.image_size}")
    _check(data.num_samples is None or data.num_samples > 0, "data.num_samples",
           f"must be > 0, got {data.num_samples}")
    r = data.index_range
    _check(r is None or (len(r) == 2 and 0 <= r[0] < r[1]), "data.index_range",
           f"must be [start, stop] with 0 <= start < stop, got {None if r is None else list(r)}")
    _check(r is None or data.num_samples is None or data.num_samples <= r[1] - r[0], "data.num_samples",
           f"must be at most the {0 if r is None else r[1] - r[0]} images of data.index_range, got {data.num_samples}")
    _check(data.shuffle_buffer > 0, "data.shuffle_buffer", f"must be > 0, got {data.shuffle_buffer}")
    _check(data.num_workers > 0, "data.num_workers", f"must be > 0, got {data.num_workers}")


def _check_train(t, d):
    _check(t.batch_size > 0, "train.batch_size", f"must be > 0, got {t.batch_size}")
    _check(t.epochs > 0, "train.epochs", f"must be > 0, got {t.epochs}")
    _check(t.max_steps is None or t.max_steps > 0, "train.max_steps", f"must be > 0, got {t.max_steps}")
    _check(0 < t.min_lr <= t.lr, "train.lr", f"needs 0 < min_lr <= lr, got min_lr={t.min_lr}, lr={t.lr}")
    _check(t.loss_scale >= 1, "train.loss_scale", f"must be >= 1, got {t.loss_scale}")
    _check(t.scale_factor > 0, "train.scale_factor", f"must be > 0, got {t.scale_factor}")
    _check(t.scale_window > 0, "train.scale_window", f"must be > 0, got {t.scale_window}")
    _check(0 <= t.cond_drop_prob < 1, "train.cond_drop_prob", f"must be in [0, 1), got {t.cond_drop_prob}")
    _check(t.lr_scaling in ("none", "linear"), "train.lr_scaling", f"must be 'none' or 'linear', got {t.lr_scaling!r}")
    _one_of(t.sample_sampler, SAMPLERS, "train.sample_sampler")
    _check(t.sample_steps is None or 1 <= t.sample_steps <= d.timesteps, "train.sample_steps",
           f"must be in [1, diffusion.timesteps={d.timesteps}], got {t.sample_steps}")
    _one_of(t.sample_spacing, SPACINGS, "train.sample_spacing")
    _check(t.guidance >= 0, "train.guidance", f"must be >= 0, got {t.guidance}")
    problem = interval_problem(t.guidance_interval, d.timesteps)
    _check(problem is None, "train.guidance_interval", f"{problem} (diffusion.timesteps)")
    _one_of(t.device, DEVICES, "train.device")
    _one_of(t.amp, AMP_LEVELS, "train.amp")
    _check(t.eval_every >= 0, "train.eval_every", f"must be >= 0 (0: no evaluation), got {t.eval_every}")
    _check(t.eval_num >= 2, "train.eval_num", f"must be >= 2, got {t.eval_num}")
    _check(0 <= t.best_margin < 1, "train.best_margin", f"must be in [0, 1) (a fraction of the FD), got {t.best_margin}")
    _check(t.minutes is None or t.minutes > 0, "train.minutes", f"must be > 0, got {t.minutes}")
    _check(0 < t.monitor_share < 1, "train.monitor_share", f"must be in (0, 1), got {t.monitor_share}")
    _check(t.minutes is None or t.max_steps is None or t.max_steps > t.warmup_steps, "train.max_steps",
           f"must exceed train.warmup_steps={t.warmup_steps} in a budgeted run, got {t.max_steps}")
    _check(0 <= t.measure_share <= 0.5, "train.measure_share", f"must be in [0, 0.5], got {t.measure_share}")
    first = t.earlier_plans[0][1] if t.earlier_plans and len(t.earlier_plans[0]) == 3 else t.decay_start
    _check(t.decay_start is None or ((first is None or t.warmup_steps <= first) and
                                     (t.max_steps is None or t.decay_start < t.max_steps)), "train.decay_start",
           f"must be below train.max_steps={t.max_steps}, and the first plan's at least train.warmup_steps="
           f"{t.warmup_steps}, got {t.decay_start} (first plan: {first})")
    _check(0 <= t.replan_every <= 1, "train.replan_every", f"must be in [0, 1] (0: no re-plans), got {t.replan_every}")
    until = [row[0] if len(row) == 3 else None for row in t.earlier_plans]
    _check(None not in until and until == sorted(until) and all(p[0] > p[1] and p[0] < p[2] for p in t.earlier_plans)
           and (not until or (t.max_steps is not None and until[-1] < t.max_steps)), "train.earlier_plans",
           f"must be [until_step, P, N] rows in increasing until_step, each P < until_step < N, the last until_step "
           f"below train.max_steps, got {[list(p) for p in t.earlier_plans]}")
    for key in ("log_every", "ckpt_every", "keep_last", "sample_num", "max_nonfinite_steps", "preview_every",
                "warmup_steps"):
        _check(getattr(t, key) > 0, f"train.{key}", f"must be > 0, got {getattr(t, key)}")


def _check_ema(e):
    _check(0 <= e.decay < 1, "ema.decay", f"must be in [0, 1), got {e.decay}")
    _check(e.update_every > 0, "ema.update_every", f"must be > 0, got {e.update_every}")


def validate(cfg):
    """Check every section's values and the keys that depend on another section; raises ConfigError naming them.

    What only the dataset can tell (its channels, image size and classes) is checked against the model by
    :func:`ddpm_ms.data.check_data_fits_model` before training.
    """
    _check_model(cfg.model)
    _check_diffusion(cfg.diffusion)
    _check_data(cfg.data, cfg.model)
    _check_train(cfg.train, cfg.diffusion)
    _check(cfg.train.eval_every == 0 or cfg.data.dataset == "fashion_mnist", "train.eval_every",
           f"needs data.dataset=fashion_mnist (the metric's classifier is a Fashion-MNIST one), "
           f"got {cfg.data.dataset!r}")
    _check_ema(cfg.ema)
    return cfg


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig,
            "ema": EMAConfig}


def from_dict(data):
    """Build and validate a Config from a nested dict (e.g. parsed YAML)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"unknown config section '{key}' (known: {', '.join(SECTIONS)})")
    return validate(Config(**{name: _section(cls, data.get(name, {}), name) for name, cls in SECTIONS.items()}))


def parse_override(text):
    """'train.batch_size=32' -> (['train', 'batch_size'], 32); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must look like section.key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return parts, value


BUNDLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")   # shipped in the package


def resolve_config_path(path):
    """A config path as given if it exists; a bare name ('fashion.yaml' or 'fashion') from the bundled configs."""
    if os.path.exists(path) or os.path.dirname(path):
        return path
    name = path if path.endswith((".yaml", ".yml")) else path + ".yaml"
    bundled = os.path.join(BUNDLED_CONFIGS, name)
    return bundled if os.path.exists(bundled) else path


def load_config(path=None, overrides=()):
    """Read a YAML config (or the defaults when ``path`` is None), apply ``section.key=value`` overrides.

    ``path`` is a file, or the bare name of a bundled config (``fashion.yaml``); an existing file wins.
    """
    data = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    for text in overrides:
        (section, key), value = parse_override(text)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        data[section][key] = value
    return from_dict(data)
