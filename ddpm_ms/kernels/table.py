"""The kernel table: every kernel of the library, once.

Each row names a layer-facing op, the factory in :mod:`ddpm_ms.kernels.ops` that builds its primitives (its shape
and dtype functions and its bprop), and the C entry points it calls, for each geometry it covers. The build
passes ``ABI``, ``NORM_EPS`` and ``CONV_GEOMETRIES`` to the C++ (``-D`` flags), the library reports the entry
points it exports (``DdpmMsKernelNames``), and the loader checks them against :func:`entry_points`.

How to add a kernel:

1. write its body in ``onednn_kernels.cc`` and export it with one ``DDPM_MS_EXPORT(Name, Body(params, shapes))``
   (an op on activations: ``DDPM_MS_NORM(Name)``, one entry per layout of :data:`LAYOUTS`);
2. add its factory (shape, dtype, bprop) to ``ops.py``;
3. add its row to :data:`KERNELS` below (and bump :data:`ABI` if an existing entry point changed);
4. route a layer to it in ``ddpm_ms/layers.py`` through :func:`ddpm_ms.layers.fast_path` (the optimizer step:
   ``ddpm_ms/train_step.py``);
5. add its shapes to ``tests/test_kernels.py``, which checks it against MindSpore's op with autodiff.
"""
from dataclasses import dataclass
from typing import Tuple

ABI = 8                                                  # DdpmMsKernelAbi(): bumped when an entry point changes
NORM_EPS = 1e-5                                          # the GroupNorm/LayerNorm kernels' eps (nn.GroupNorm's)
CONV_GEOMETRIES = ((1, 0), (1, 1), (1, 2), (1, 3), (2, 1))   # (stride, padding) of the conv entry points
SOFTMAX_AXES = {-1: "last", -2: "penult"}
LAYOUTS = {"NCHW": "", "NHWC": "_nhwc"}                  # activation layout -> entry-point suffix (convs, norms)
ACTIVATIONS = ("gelu", "silu")
ATTENTIONS = {"linear": "LinearAttention", "softmax": "SoftmaxAttention"}   # kind -> entry-point stem


@dataclass(frozen=True)
class Kernel:
    """A row: the op's ``name`` (a factory in kernels/ops.py) and the C ``entries`` it calls."""
    name: str
    entries: Tuple[str, ...]
    summary: str


def _conv_entries():
    return tuple(f"{kind}_s{s}p{p}{suffix}" for s, p in CONV_GEOMETRIES for suffix in LAYOUTS.values()
                 for kind in ("ConvFwd", "ConvBwdData", "ConvBwdWeights", "ConvBwd", "ConvBiasFwd", "ConvBiasBwd",
                              "ConvAddFwd", "ConvBiasAddFwd"))


def _in_layouts(*names):
    return tuple(f"{n}{suffix}" for n in names for suffix in LAYOUTS.values())


KERNELS = (
    Kernel("conv2d", _conv_entries(),
           "convolution (with or without its bias, and a residual added), NHWC on oneDNN's JIT kernels (the "
           "transposed one reuses them)"),
    Kernel("group_norm", _in_layouts("GroupNormFwd", "GroupNormBwd"), "GroupNorm, parallel over samples"),
    Kernel("group_norm_silu", _in_layouts("GroupNormSiluFwd", "GroupNormSiluBwd", "GroupNormModSiluFwd",
                                          "GroupNormModSiluBwd", "GroupNormSiluAddFwd"),
           "a ResNet block's GroupNorm, time modulation (the time MLP's output as it is) and SiLU in one op; the "
           "second norm with the block's residual added"),
    Kernel("channel_norm", _in_layouts("ChannelNormFwd", "ChannelNormBwd", "ChannelNormAddFwd"),
           "the tutorial's channel LayerNorm (with a residual added)"),
    Kernel("softmax", tuple(f"Softmax{d}_{a}" for a in SOFTMAX_AXES.values() for d in ("Fwd", "Bwd")),
           "softmax over the last or second-to-last axis"),
    Kernel("eltwise", tuple(f"Eltwise{d}_{a}" for a in ACTIVATIONS for d in ("Fwd", "Bwd")), "GELU (tanh) and SiLU"),
    Kernel("adam_step", ("AdamStep",),
           "the optimizer step: unscale, overflow check and Adam over all parameters, in place"),
    Kernel("ema_update", ("EmaUpdate",), "the EMA of all parameters into its flat buffer, in place"),
    Kernel("attention", tuple(f"{n}{d}" for n in ATTENTIONS.values() for d in ("Fwd", "Bwd")),
           "multi-head softmax and linear attention over channels-last positions, qkv as a 1x1 conv gives it"),
    Kernel("dense_many", ("DenseManyFwd", "DenseManyBwd"),
           "several Dense layers on one input in one op: the blocks' time MLPs on the shared time embedding"),
)


def entry_points():
    """Every C entry point the library must export, as the table lists them."""
    return tuple(e for k in KERNELS for e in k.entries)


def cxx_defines():
    """The ``-D`` flags that carry the table's facts into the C++ build."""
    geometries = " ".join(f"X({s},{p})" for s, p in CONV_GEOMETRIES)
    return [f"-DDDPM_MS_ABI={ABI}", f"-DDDPM_MS_NORM_EPS={NORM_EPS!r}", f"-DDDPM_MS_CONV_GEOMETRIES={geometries}"]
