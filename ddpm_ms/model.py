"""The tutorial's noise-prediction U-Net, eps_theta(x_t, t[, y]).

The network knows nothing of betas or timesteps beyond the integer ``t`` it
embeds: all diffusion maths lives in :mod:`ddpm_ms.diffusion`.

Parameter for parameter this is MindSpore's "Diffusion Model" tutorial
(ConvNeXt blocks, linear attention, PreNorm, sinusoidal time embedding),
with MindSpore's layer defaults (``has_bias=False`` convolutions unless the
tutorial says otherwise). ``Unet(dim=28, channels=1, dim_mults=(1, 2, 4))``
has 2,992,180 trainable parameters. A few ops are written in a faster but
mathematically identical form (see :class:`GELU` and :mod:`ddpm_ms.layers`).
"""
import math
from collections import OrderedDict

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from . import kernels
from .layers import (GELU, Conv2d, Conv2dTranspose, DenseMany, DepthwiseConv2d, GroupNorm, GroupNormSiLU, HeadAttention,
                     LayerNorm, SiLU, Softmax, activation_layout, channel_axis, current_layout, from_nchw, per_channel,
                     to_nchw)

BLOCK_TYPES = ("convnext", "resnet")


def _heads(x, heads):
    """[b, heads*c, h, w] -> [b, heads, c, h*w]."""
    b, hc, h, w = x.shape
    return x.reshape((b, heads, hc // heads, h * w))


class Residual(nn.Cell):
    """x + fn(x), as ``fn(x, x)``: fn adds its second argument to its output (inside its last kernel on CPU)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, x):
        return self.fn(x, x)


def Upsample(dim):  # pylint: disable=invalid-name
    """Transposed conv that doubles H and W: [B, dim, H, W] -> [B, dim, 2H, 2W]."""
    return Conv2dTranspose(dim, dim, 4, 2, pad_mode="pad", padding=1)


def Downsample(dim):  # pylint: disable=invalid-name
    """Strided conv that halves H and W: [B, dim, H, W] -> [B, dim, H/2, W/2]."""
    return Conv2d(dim, dim, 4, 2, pad_mode="pad", padding=1)


class SinusoidalPositionEmbeddings(nn.Cell):
    """t [B] (int or float) -> [B, dim] of (sin(t w_k), cos(t w_k)), w_k = 10000^(-k/(dim/2-1))."""

    def __init__(self, dim):
        super().__init__()
        half_dim = dim // 2
        freqs = np.exp(np.arange(half_dim) * -(math.log(10000) / (half_dim - 1)))
        self.freqs = Tensor(freqs, ms.float32)

    def construct(self, t):
        emb = t.astype(ms.float32)[:, None] * self.freqs[None, :]
        return ops.concat((ops.sin(emb), ops.cos(emb)), axis=-1)


class Block(nn.Cell):
    """Conv3x3 -> GroupNorm -> optional (scale+1, shift) -> SiLU. Shapes [B,dim,H,W] -> [B,dim_out,H,W];
    ``scale_shift`` [B, 2 dim_out]: (scale, shift) as its halves, or None.

    The last three are one layer (:class:`ddpm_ms.layers.GroupNormSiLU`, one kernel on CPU).
    """

    def __init__(self, dim, dim_out, groups=1):
        super().__init__()
        self.proj = Conv2d(dim, dim_out, 3, pad_mode="pad", padding=1)
        self.norm = GroupNormSiLU(groups, dim_out)

    def construct(self, x, scale_shift=None, residual=None):
        """... + residual (shaped as the output) if given."""
        return self.norm(self.proj(x), scale_shift, residual)


def _time_mlp(time_emb_dim, width):
    """A block's time MLP after its activation: Dense(time_emb_dim, width), named as the tutorial's
    nn.Sequential(act, Dense) ("mlp.1.weight"). The U-Net applies ``time_act`` once, and all the blocks' Dense
    layers in one op (:meth:`Unet.time_embeddings`)."""
    return nn.SequentialCell(OrderedDict([("1", nn.Dense(time_emb_dim, width))])) if time_emb_dim else None


class _TimedBlock(nn.Cell):
    """A block whose time MLP (``self.mlp``, or None) the U-Net applies for it: ``construct(x, emb)`` takes
    emb = mlp(time_act(t_emb)), and :meth:`time_params` gives the U-Net that Dense layer's (weight, bias)."""

    def time_params(self):
        dense = self.mlp[0]
        return dense.weight, dense.bias

    def time_embedding(self, time_act):
        """emb [B, width] from time_act [B, time_emb_dim] (this block alone; the U-Net does all at once)."""
        return self.mlp(time_act)


class ResnetBlock(_TimedBlock):
    """Wide-ResNet block with time scale-shift conditioning (annotated-diffusion).

    ``construct(x [B,dim,H,W], emb [B, 2 dim_out] or None)``: emb = (scale, shift) as its halves, the block's time
    MLP of silu(t_emb) (:attr:`time_act`, :meth:`time_embedding`).
    """

    time_act = SiLU

    def __init__(self, dim, dim_out, *, time_emb_dim=None, groups=8):
        super().__init__()
        self.mlp = _time_mlp(time_emb_dim, dim_out * 2)
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def construct(self, x, emb=None):
        h = self.block1(x, emb)
        return self.block2(h, None, self.res_conv(x))   # block2(h) + res_conv(x), the add inside its norm


class ConvNextBlock(_TimedBlock):
    """ConvNeXt block (Liu et al. 2022) with an additive time embedding.

    ``construct(x [B,dim,H,W], emb [B, dim] or None)``: emb added per channel after the depthwise conv, the
    block's time MLP of gelu(t_emb) (:attr:`time_act`, :meth:`time_embedding`).
    """

    time_act = GELU

    def __init__(self, dim, dim_out, *, time_emb_dim=None, mult=2, norm=True):
        super().__init__()
        self.mlp = _time_mlp(time_emb_dim, dim)
        self.ds_conv = DepthwiseConv2d(dim, 7)
        self.net = nn.SequentialCell([
            GroupNorm(1, dim) if norm else nn.Identity(),
            Conv2d(dim, dim_out * mult, 3, padding=1, pad_mode="pad"),
            GELU(),
            GroupNorm(1, dim_out * mult),
            Conv2d(dim_out * mult, dim_out, 3, padding=1, pad_mode="pad"),
        ])
        self.res_conv = Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()
        self.layout = current_layout()

    def construct(self, x, emb=None):
        h = self.ds_conv(x)
        if emb is not None:
            h = h + per_channel(self.layout, emb)
        last = len(self.net) - 1
        for i in range(last):
            h = self.net[i](h)
        return self.net[last](h, self.res_conv(x))   # net(h) + res_conv(x), the add inside the last conv


class _MultiHeadQKV(nn.Cell):
    """Shared 1x1 q/k/v projection: x [B, dim, H, W] -> q, k, v each [B, heads, dim_head, H*W].

    Built for NHWC activations (the kernels), the layer works channels-last throughout: x [B, H, W, dim] ->
    qkv [B, H*W, 3, heads, dim_head] -> :class:`ddpm_ms.layers.HeadAttention`, with no transposes.
    """

    def __init__(self, dim, heads, dim_head, kind):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.layout = current_layout()
        self.to_qkv = Conv2d(dim, dim_head * heads * 3, 1, pad_mode="valid", has_bias=False)
        self.attend = HeadAttention(kind) if self.layout == "NHWC" else None
        self.matmul_at = ops.BatchMatMul(transpose_a=True)    # a^T b without a Transpose op
        self.matmul_bt = ops.BatchMatMul(transpose_b=True)    # a b^T

    def qkv(self, x):
        q, k, v = ops.chunk(self.to_qkv(x), 3, 1)
        return _heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads)

    def channels_last(self, x):
        """x [B, H, W, dim] -> the heads' outputs [B, H, W, heads * dim_head]."""
        b, h, w, _ = x.shape
        qkv = self.to_qkv(x).reshape((b, h * w, 3, self.heads, -1))
        return self.attend(qkv).reshape((b, h, w, -1))


class Attention(_MultiHeadQKV):
    """Multi-head softmax self-attention over the H*W positions."""

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__(dim, heads, dim_head, "softmax")
        self.to_out = Conv2d(dim_head * heads, dim, 1, pad_mode="valid", has_bias=True)
        self.softmax = Softmax(-1)

    def construct(self, x, residual=None):
        """[B, dim, H, W] -> the same (+ residual, if given)."""
        if self.layout == "NHWC":
            return self.to_out(self.channels_last(x), residual)
        b, _, h, w = x.shape
        q, k, v = self.qkv(x)
        sim = self.matmul_at(q * self.scale, k)       # b h i j = (q s)^T k
        attn = self.softmax(sim)
        out = self.matmul_bt(v, attn)                 # b h d i = (attn v^T)^T
        return self.to_out(out.reshape((b, -1, h, w)), residual)


class LinearAttention(_MultiHeadQKV):
    """Linear attention (Shen et al. 2018): softmax over features for q, positions for k."""

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__(dim, heads, dim_head, "linear")
        self.softmax_q = Softmax(-2)
        self.softmax_k = Softmax(-1)
        self.to_out = nn.SequentialCell([
            Conv2d(dim_head * heads, dim, 1, pad_mode="valid", has_bias=True),
            LayerNorm(dim),
        ])

    def construct(self, x, residual=None):
        """[B, dim, H, W] -> the same (+ residual, if given, inside the output LayerNorm)."""
        if self.layout == "NHWC":
            return self.to_out[1](self.to_out[0](self.channels_last(x)), residual)
        b, _, h, w = x.shape
        q, k, v = self.qkv(x)
        q = self.softmax_q(q)
        k = self.softmax_k(k)
        # the tutorial scales q by dim_head^-0.5 and v by 1/(h w); both are linear, so they scale the small
        # context instead: out = (k (v/hw)^T)^T (q s) = (s/hw) (k v^T)^T q
        context = self.matmul_bt(k, v) * (self.scale / (h * w))   # b h d e
        out = self.matmul_at(context, q)                           # b h e n
        return self.to_out[1](self.to_out[0](out.reshape((b, -1, h, w))), residual)


class PreNorm(nn.Cell):
    """fn(GroupNorm(1, dim)(x)) (+ residual, passed on to fn)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = GroupNorm(1, dim)

    def construct(self, x, residual=None):
        return self.fn(self.norm(x), residual)


class _Stage(nn.Cell):
    """Two blocks, residual linear attention, then a resampling layer."""

    def __init__(self, block1, block2, dim, resample, heads=4, dim_head=32):
        super().__init__()
        self.block1 = block1
        self.block2 = block2
        self.attn = Residual(PreNorm(dim, LinearAttention(dim, heads, dim_head)))
        self.resample = resample

    def construct(self, x, emb1, emb2):
        x = self.attn(self.block2(self.block1(x, emb1), emb2))
        return x, self.resample(x)


class Unet(nn.Cell):
    """eps_theta: x [B, C, H, W] float, t [B] int -> [B, out_dim, H, W].

    H and W must be divisible by 2**(len(dim_mults) - 1).
    ``num_classes`` adds a learned class embedding (plus one "null" class,
    index ``num_classes``, for classifier-free guidance) to the time embedding;
    then ``construct(x, t, y)`` takes labels y [B] int. ``attn_heads`` x
    ``attn_dim_head`` is the width of every attention layer (tutorial: 4 x 32).
    """

    def __init__(self, dim, init_dim=None, out_dim=None, dim_mults=(1, 2, 4, 8), channels=3,
                 with_time_emb=True, convnext_mult=2, block_type="convnext", resnet_groups=8,
                 num_classes=None, attn_heads=4, attn_dim_head=32):
        super().__init__()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        if num_classes is not None and not with_time_emb:
            raise ValueError("num_classes needs with_time_emb=True")
        # activations NHWC between the layers on the kernels (no reorder around a convolution), else NCHW
        self.layout = kernels.layout()
        with activation_layout(self.layout):
            self.channels = channels
            self.num_classes = num_classes
            init_dim = dim // 3 * 2 if init_dim is None else init_dim
            self.init_conv = Conv2d(channels, init_dim, 7, padding=3, pad_mode="pad", has_bias=True)

            dims = [init_dim, *[dim * m for m in dim_mults]]
            in_out = list(zip(dims[:-1], dims[1:]))

            block_cls = ConvNextBlock if block_type == "convnext" else ResnetBlock

            def block(d_in, d_out, time_dim):
                if block_cls is ConvNextBlock:
                    return ConvNextBlock(d_in, d_out, time_emb_dim=time_dim, mult=convnext_mult)
                return ResnetBlock(d_in, d_out, time_emb_dim=time_dim, groups=resnet_groups)

            time_dim = None
            self.time_mlp = None
            self.time_act = None
            self.class_emb = None
            if with_time_emb:
                # every block's time MLP starts with the same activation of t: applied once, here
                self.time_act = block_cls.time_act()
                time_dim = dim * 4
                self.time_mlp = nn.SequentialCell([
                    SinusoidalPositionEmbeddings(dim),
                    nn.Dense(dim, time_dim),
                    GELU(),
                    nn.Dense(time_dim, time_dim),
                ])
                if num_classes is not None:
                    self.class_emb = nn.Embedding(num_classes + 1, time_dim)

            num_resolutions = len(in_out)
            attn = (attn_heads, attn_dim_head)
            downs = []
            for ind, (d_in, d_out) in enumerate(in_out):
                is_last = ind >= num_resolutions - 1
                downs.append(_Stage(block(d_in, d_out, time_dim), block(d_out, d_out, time_dim), d_out,
                                    Downsample(d_out) if not is_last else nn.Identity(), *attn))
            ups = []
            for ind, (d_in, d_out) in enumerate(reversed(in_out[1:])):
                is_last = ind >= num_resolutions - 1   # never true: every up stage upsamples, as in the tutorial
                ups.append(_Stage(block(d_out * 2, d_in, time_dim), block(d_in, d_in, time_dim), d_in,
                                  Upsample(d_in) if not is_last else nn.Identity(), *attn))
            self.downs = nn.CellList(downs)
            self.ups = nn.CellList(ups)

            mid_dim = dims[-1]
            self.mid_block1 = block(mid_dim, mid_dim, time_dim)
            self.mid_attn = Residual(PreNorm(mid_dim, Attention(mid_dim, *attn)))
            self.mid_block2 = block(mid_dim, mid_dim, time_dim)

            out_dim = channels if out_dim is None else out_dim
            self.final_block = block(dim, dim, None)
            self.final_conv = Conv2d(dim, out_dim, 1)
            self.time_dense = DenseMany(2 * len(downs) + 2 + 2 * len(ups)) if with_time_emb else None

    def time_params(self):
        """The (weight, bias) of every block's time MLP, in the order the blocks run."""
        params = ()
        for stage in self.downs:
            params = params + (stage.block1.time_params(), stage.block2.time_params())
        params = params + (self.mid_block1.time_params(), self.mid_block2.time_params())
        for stage in self.ups:
            params = params + (stage.block1.time_params(), stage.block2.time_params())
        return params

    def time_embeddings(self, time, y=None):
        """Every block's time embedding from t [B] (and labels y [B]), in the order the blocks run: one op for the
        blocks' Dense layers, as they share their input, time_act(time_mlp(t) [+ class_emb(y)])."""
        t = self.time_mlp(time)
        if self.class_emb is not None and y is not None:
            t = t + self.class_emb(y)
        return self.time_dense(self.time_act(t), self.time_params())

    def construct(self, x, time, y=None):
        x = self.init_conv(from_nchw(self.layout, x))
        n = 2 * len(self.downs) + 2 + 2 * len(self.ups)
        emb = self.time_embeddings(time, y) if self.time_mlp is not None else (None,) * n
        skips = ()
        e = 0
        for stage in self.downs:
            skip, x = stage(x, emb[e], emb[e + 1])
            skips = skips + (skip,)
            e += 2
        x = self.mid_block1(x, emb[e])
        x = self.mid_attn(x)
        x = self.mid_block2(x, emb[e + 1])
        e += 2
        i = len(skips) - 1
        for stage in self.ups:
            _, x = stage(ops.concat((x, skips[i]), channel_axis(self.layout)), emb[e], emb[e + 1])
            i -= 1
            e += 2
        return to_nchw(self.layout, self.final_conv(self.final_block(x)))


def count_params(net):
    """Number of trainable scalars in ``net``."""
    return int(sum(np.prod(p.shape) for p in net.trainable_params()))
