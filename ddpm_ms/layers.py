"""Drop-in layers: MindSpore's Conv2d, Conv2dTranspose and GroupNorm (same parameters, names, shapes and
initialisation), the tutorial's channel LayerNorm, a softmax and the activations, that run on :mod:`ddpm_ms.kernels` on CPU, and
MindSpore's own ops elsewhere.

The path is chosen when the layer is built (``ddpm_ms.kernels.library()``); a layer whose geometry or input dtype
the kernels do not cover runs MindSpore's op. Checkpoints are the same either way.

So is the activation layout: NCHW, as MindSpore's layers, unless the layer is built inside
``with activation_layout('NHWC'):`` (what :class:`ddpm_ms.Unet` does on the kernels), when its input and output are
NHWC [B,H,W,C] and its parameters are still MindSpore's. Off the kernels an NHWC layer runs MindSpore's NCHW op
between two transposes.
"""
from contextlib import contextmanager

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer

from . import kernels
from .kernels import ops as kops
from .kernels.table import ATTENTIONS, CONV_GEOMETRIES, NORM_EPS


_build = {"layout": "NCHW"}


@contextmanager
def activation_layout(layout):
    """Layers built inside the block take and give activations in ``layout`` ('NCHW' or 'NHWC')."""
    previous = _build["layout"]
    _build["layout"] = layout
    try:
        yield
    finally:
        _build["layout"] = previous


def current_layout(layout=None):
    """``layout`` if given, else the layout of layers built now (see :func:`activation_layout`)."""
    return layout or _build["layout"]


def to_nchw(layout, x):
    """x [B,C,H,W] or [B,H,W,C] (``layout``, a constant) -> [B,C,H,W]."""
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def from_nchw(layout, x):
    """x [B,C,H,W] -> ``layout``."""
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def channel_axis(layout):
    """The channel axis of a 4-d activation in ``layout``."""
    return 1 if layout == "NCHW" else 3


def per_channel(layout, v):
    """v [B,C] -> broadcastable against a [B,C,H,W] (or [B,H,W,C]) activation."""
    return v[:, :, None, None] if layout == "NCHW" else v[:, None, None, :]


def kernel_op(factory, *args, when=True):
    """The kernel op ``factory(lib, *args)`` (kernels/ops.py) when the kernel library is in use and ``when``
    holds, else None: what a layer keeps as ``self.fast``, decided once, when it is built."""
    lib = kernels.library()
    return factory(lib, *args) if lib and when else None


def fast_path(cell, x):
    """Whether ``cell`` runs its kernel op on ``x``: it has one, and x is float32 (the kernels' dtype). A constant
    when the graph is compiled."""
    return cell.fast is not None and x.dtype == ms.float32


def _square(pair):
    return pair[0] if pair[0] == pair[1] else None


def _symmetric_padding(cell):
    """The one padding of all four sides, or None if they differ or the mode does not pad explicitly."""
    if cell.pad_mode == "valid":
        return 0
    if cell.pad_mode == "same":
        k = _square(cell.kernel_size)
        return (k - 1) // 2 if k is not None and k % 2 == 1 and _square(cell.stride) == 1 else None
    pads = (cell.padding,) * 4 if isinstance(cell.padding, int) else tuple(cell.padding)
    return pads[0] if len(set(pads)) == 1 else None


def _geometry(cell):
    """(stride, padding) of a conv cell if the kernels cover it, else None."""
    if getattr(cell, "data_format", "NCHW") != "NCHW" or _square(cell.dilation) != 1:
        return None
    geometry = (_square(cell.stride), _symmetric_padding(cell))
    return geometry if geometry in CONV_GEOMETRIES else None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the same parameters; runs on the oneDNN kernel on CPU. [B,IC,H,W] -> [B,OC,OH,OW]
    (NHWC in and out if built for it: ``layout`` or :func:`activation_layout`).

    ``construct(x, residual=None)``: conv(x) + residual, residual shaped as the output (a residual connection's
    add, inside the kernel on CPU)."""

    def __init__(self, *args, layout=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.layout = current_layout(layout)
        geometry = _geometry(self)
        args = (*(geometry or (1, 0)), self.group, self.layout, self.has_bias)
        self.fast = kernel_op(kops.conv2d, *args, when=geometry is not None)
        self.fast_add = kernel_op(kops.conv2d, *args, True, when=geometry is not None)
        self.fast_pad = geometry[1] if geometry else 0

    def construct(self, x, residual=None):
        height = x.shape[2] if self.layout == "NCHW" else x.shape[1]
        exact = (height + 2 * self.fast_pad - self.kernel_size[0]) % self.stride[0] == 0
        if not fast_path(self, x) or not exact:
            y = from_nchw(self.layout, super().construct(to_nchw(self.layout, x)))
            return y if residual is None else y + residual
        params = (self.weight, self.bias) if self.has_bias else (self.weight,)  # the bias inside the kernel too
        if residual is None:
            return self.fast(x, *params)
        return self.fast_add(x, *params, residual)


class Conv2dTranspose(nn.Conv2dTranspose):
    """``nn.Conv2dTranspose`` with the same parameters; runs on the oneDNN kernels on CPU.

    [B,IC,H,W] -> [B,OC,(H-1)S-2P+K,(W-1)S-2P+K] (NHWC in and out if built for it, as :class:`Conv2d`).
    """

    def __init__(self, *args, layout=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.layout = current_layout(layout)
        geometry = _geometry(self) if self.pad_mode == "pad" and self.output_padding == 0 else None
        self.fast = kernel_op(kops.conv_transpose2d, *(geometry or (1, 0)), self.group, self.layout,
                              when=geometry is not None)

    def construct(self, x):
        if not fast_path(self, x):
            return from_nchw(self.layout, super().construct(to_nchw(self.layout, x)))
        y = self.fast(x, self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias) if self.layout == "NCHW" else y + self.bias
        return y


class _DepthwiseConvFn(nn.Cell):
    """y = depthwise_conv(x, w) ('same' padding, stride 1) with a cheaper hand-written backward.

    The fallback path of :class:`DepthwiseConv2d`. MindSpore's CPU backward of a grouped conv is ~5x its
    forward. Both grads are ordinary forward convs instead (same maths, reordered sums):
      dL/dx = depthwise_conv(dL/dy, w flipped in H and W)
      dL/dw[c] = sum_b xpad[b, c] (*) dL/dy[b, c], one grouped conv with batch folded into channels.
    """

    def __init__(self, kernel_size):
        super().__init__()
        self.pad = kernel_size // 2

    def construct(self, x, w):
        c = x.shape[1]
        return ops.Conv2D(c, w.shape[2], pad_mode="pad", pad=self.pad, group=c)(x, w)

    def bprop(self, x, w, out, dout):
        b, c, h, wd = x.shape
        p = self.pad
        dx = ops.Conv2D(c, w.shape[2], pad_mode="pad", pad=p, group=c)(dout, ops.reverse(w, [2, 3]))
        xpad = ops.pad(x, (p, p, p, p)).transpose(1, 0, 2, 3).reshape(1, c * b, h + 2 * p, wd + 2 * p)
        dw = ops.Conv2D(c, (h, wd), group=c)(xpad, dout.transpose(1, 0, 2, 3)).reshape(w.shape)
        return dx, dw


class DepthwiseConv2d(Conv2d):
    """``nn.Conv2d(dim, dim, k, padding=k//2, group=dim)`` (same parameter, same init).

    On the oneDNN kernels on CPU; elsewhere MindSpore's forward with the hand-written backward of
    :class:`_DepthwiseConvFn`.
    """

    def __init__(self, dim, kernel_size):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, group=dim, pad_mode="pad")
        self.depthwise = _DepthwiseConvFn(kernel_size)

    def construct(self, x):
        if not fast_path(self, x):
            # the weight in x's dtype (float16 under mixed precision) through an explicit Cast, whose gradient
            # gives the float32 Parameter a float32 grad (the hand-written bprop cannot know the Parameter's dtype)
            y = self.depthwise(to_nchw(self.layout, x), self.weight.astype(x.dtype))
            return from_nchw(self.layout, y)
        return self.fast(x, self.weight)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters); [B,C,H,W] -> [B,C,H,W] (NHWC if built for it, as :class:`Conv2d`).

    On CPU it runs the kernel library's GroupNorm (forward and backward). Elsewhere, in training it is
    ``nn.GroupNorm``, and in inference it runs on the LayerNorm kernel: normalising [B, G, C/G, H, W] over its
    last three axes is the same function, and on CPU its forward is about 2x faster.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, layout=None):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.layout = current_layout(layout)
        self.fast = kernel_op(kops.group_norm, num_groups, self.layout, when=eps == NORM_EPS)

    def construct(self, x):
        if fast_path(self, x):
            y, _, _ = self.fast(x, self.gamma, self.beta)
            return y
        return from_nchw(self.layout, self._plain(to_nchw(self.layout, x)))

    def _plain(self, x):
        """MindSpore's ops on x [B,C,H,W]."""
        if self.training:
            return self._cal_output(x)
        b, c, h, w = x.shape
        g = self.num_groups
        shape = (g, c // g, h, w)
        y, _, _ = ops.LayerNorm(begin_norm_axis=2, begin_params_axis=1, epsilon=self.eps)(
            x.reshape((b,) + shape), self.gamma.reshape(g, c // g, 1, 1).broadcast_to(shape),
            self.beta.reshape(g, c // g, 1, 1).broadcast_to(shape))
        return y.reshape(b, c, h, w)


class GroupNormSiLU(GroupNorm):
    """silu(GroupNorm(x) * (1 + scale) + shift): a ResNet block's norm, time modulation and activation.

    The parameters are GroupNorm's. ``construct(x [B,C,H,W], scale_shift=None)`` (x NHWC if built for it),
    scale_shift [B, 2C] the time MLP's output, (scale, shift) its halves, or None (no modulation). On CPU it is one
    kernel (forward and backward); elsewhere the three steps.
    """

    def __init__(self, num_groups, num_channels, layout=None):
        super().__init__(num_groups, num_channels, layout=layout)
        self.fused = kernel_op(kops.group_norm_silu, num_groups, self.layout, True)
        self.fused_plain = kernel_op(kops.group_norm_silu, num_groups, self.layout, False)
        self.fused_add = kernel_op(kops.group_norm_silu, num_groups, self.layout, False, True)

    def construct(self, x, scale_shift=None, residual=None):
        """... + residual (shaped as x) if given: a ResNet block's residual add, inside the kernel on CPU."""
        if self.fused is not None and x.dtype == ms.float32:   # the fused op (self.fast is the plain GroupNorm)
            if scale_shift is None and residual is not None:
                y, _, _ = self.fused_add(x, self.gamma, self.beta, residual)
                return y
            if scale_shift is None:
                y, _, _ = self.fused_plain(x, self.gamma, self.beta)
            else:
                y, _, _ = self.fused(x, self.gamma, self.beta, scale_shift)
            return y if residual is None else y + residual
        x = self._plain(to_nchw(self.layout, x))
        if scale_shift is not None:
            scale, shift = ops.chunk(scale_shift[:, :, None, None], 2, 1)
            x = x * (scale + 1) + shift
        y = from_nchw(self.layout, ops.silu(x))
        return y if residual is None else y + residual


class LayerNorm(nn.Cell):
    """Channel LayerNorm with a gain only: (x - mean_c) / sqrt(var_c + eps) * g. [B,C,H,W] -> [B,C,H,W]
    (NHWC if built for it, as :class:`Conv2d`)."""

    def __init__(self, dim, eps=1e-5, layout=None):
        super().__init__()
        self.g = Parameter(initializer("ones", (1, dim, 1, 1)), name="g")
        self.eps = eps
        self.layout = current_layout(layout)
        self.fast = kernel_op(kops.channel_norm, self.layout, when=eps == NORM_EPS)
        self.fast_add = kernel_op(kops.channel_norm, self.layout, True, when=eps == NORM_EPS)

    def construct(self, x, residual=None):
        """... + residual (shaped as x) if given, inside the kernel on CPU."""
        if fast_path(self, x):
            if residual is None:
                y, _, _ = self.fast(x, self.g)
            else:
                y, _, _ = self.fast_add(x, self.g, residual)
            return y
        x = to_nchw(self.layout, x)
        mean = x.mean(1, keep_dims=True)
        var = ((x - mean) ** 2).mean(1, keep_dims=True)
        y = from_nchw(self.layout, (x - mean) * ops.rsqrt(var + self.eps) * self.g)
        return y if residual is None else y + residual


def softmax_axis2(x):
    """Softmax over axis -2 of a rank-4 tensor, via MindSpore's faster last-axis kernel."""
    return ops.softmax(x.swapaxes(-1, -2), -1).swapaxes(-1, -2)


class Softmax(nn.Cell):
    """Softmax over ``axis`` (-1 or -2), on the kernel library's oneDNN softmax on CPU; same shape out."""

    def __init__(self, axis):
        super().__init__()
        if axis not in (-1, -2):
            raise ValueError(f"Softmax axis must be -1 or -2, got {axis}")
        self.axis = axis
        self.fast = kernel_op(kops.softmax, axis)

    def construct(self, x):
        if fast_path(self, x):
            return self.fast(x)
        if self.axis == -2:
            return softmax_axis2(x)
        return ops.softmax(x, -1)


class HeadAttention(nn.Cell):
    """Multi-head attention of channels-last q, k, v: qkv [B,N,3,heads,D] (an NHWC 1x1 convolution's output,
    reshaped; N positions) -> [B,N,heads,D], with s = D^-1/2; on the kernel library's fused op on CPU (no transposes),
    else MindSpore's ops.

    kind 'softmax' (Vaswani et al. 2017, eq. 1): out_i = sum_j softmax_j(s q_i . k_j) v_j.
    kind 'linear' (Shen et al. 2018): out_n = (s / N) sum_m (softmax_d(q_n) . softmax_m(k)_m) v_m, q's softmax over
    its D features, k's over the N positions.
    """

    def __init__(self, kind):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention kind must be one of {tuple(ATTENTIONS)}, got {kind!r}")
        self.linear = kind == "linear"
        self.fast = kernel_op(kops.attention, kind)
        self.matmul = ops.BatchMatMul()
        self.matmul_at = ops.BatchMatMul(transpose_a=True)
        self.matmul_bt = ops.BatchMatMul(transpose_b=True)

    def construct(self, qkv):
        if fast_path(self, qkv):
            return self.fast(qkv)
        scale = qkv.shape[-1] ** -0.5
        q = qkv[:, :, 0].transpose(0, 2, 1, 3)    # [B, heads, N, D]
        k = qkv[:, :, 1].transpose(0, 2, 1, 3)
        v = qkv[:, :, 2].transpose(0, 2, 1, 3)
        if self.linear:
            context = self.matmul_at(softmax_axis2(k), v) * (scale / qkv.shape[1])   # [B, heads, D, D]
            out = self.matmul(ops.softmax(q, -1), context)
        else:
            out = self.matmul(ops.softmax(self.matmul_bt(q, k) * scale, -1), v)
        return out.transpose(0, 2, 1, 3)


class DenseMany(nn.Cell):
    """``n`` Dense layers on one input: ``construct(x [B,K], params) -> (y_1 [B,O_1], ..., y_n)``, params the n
    ``(w_i [O_i,K], b_i [O_i])`` pairs of nn.Dense layers, y_i = x w_i^T + b_i. One kernel op each way on CPU (the
    U-Net's per-block time MLPs, which all read the same activated time embedding), else MindSpore's dense per pair.
    """

    def __init__(self, n):
        super().__init__()
        self.fast = kernel_op(kops.dense_many, n)

    def construct(self, x, params):
        if fast_path(self, x):
            return self.fast(x, *[w for w, _ in params], *[b for _, b in params])
        return tuple([ops.dense(x, w, b) for w, b in params])


class _Activation(nn.Cell):
    """An elementwise activation on the kernel library's oneDNN eltwise on CPU, else ``fallback(x)``."""

    def __init__(self, name):
        super().__init__()
        self.fast = kernel_op(kops.eltwise, name)

    def construct(self, x):
        if fast_path(self, x):
            return self.fast(x)
        return self.fallback(x)


class GELU(_Activation):
    """Tanh-approximate GELU, the function ``nn.GELU()`` computes.

    Off the kernels: 0.5 x (1 + tanh(u)) == x * sigmoid(2u), with u = sqrt(2/pi)(x + 0.044715 x^3); the sigmoid
    form is about 5x faster fwd+bwd than ``nn.GELU`` on MindSpore's CPU kernels.
    """

    def __init__(self):
        super().__init__("gelu")

    def fallback(self, x):
        return x * ops.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


class SiLU(_Activation):
    """x * sigmoid(x), as ``nn.SiLU``."""

    def __init__(self):
        super().__init__("silu")

    def fallback(self, x):
        return ops.silu(x)
