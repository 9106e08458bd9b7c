"""MindSpore's "Diffusion Model" tutorial network and train step, as the tutorial writes them.

Kept only as the reference for the equivalence test of ddpm_ms's fast formulation (tests/test_equivalence.py). Differences from the
page: ``Block`` no longer references the undefined ``c``, and parameter names
are made unique by building lists before ``nn.CellList`` rather than a rename
loop. Do not use it for work: use ``ddpm_ms.Unet``.
"""
import math
from functools import partial

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer


def rearrange(head, inputs):
    b, hc, x, y = inputs.shape
    c = hc // head
    return inputs.reshape((b, head, c, x * y))


def rsqrt(x):
    return ops.inv(ops.sqrt(x))


class Residual(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, x, *args, **kwargs):
        return self.fn(x, *args, **kwargs) + x


def upsample(dim):
    return nn.Conv2dTranspose(dim, dim, 4, 2, pad_mode="pad", padding=1)


def downsample(dim):
    return nn.Conv2d(dim, dim, 4, 2, pad_mode="pad", padding=1)


class SinusoidalPositionEmbeddings(nn.Cell):
    def __init__(self, dim):
        super().__init__()
        half_dim = dim // 2
        emb = math.log(10000) / (half_dim - 1)
        self.emb = Tensor(np.exp(np.arange(half_dim) * -emb), ms.float32)

    def construct(self, x):
        emb = x[:, None] * self.emb[None, :]
        return ops.concat((ops.sin(emb), ops.cos(emb)), axis=-1)


class ConvNextBlock(nn.Cell):
    def __init__(self, dim, dim_out, *, time_emb_dim=None, mult=2, norm=True):
        super().__init__()
        self.mlp = nn.SequentialCell(nn.GELU(), nn.Dense(time_emb_dim, dim)) if time_emb_dim is not None else None
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, group=dim, pad_mode="pad")
        self.net = nn.SequentialCell(
            nn.GroupNorm(1, dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1, pad_mode="pad"),
            nn.GELU(),
            nn.GroupNorm(1, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1, pad_mode="pad"),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def construct(self, x, time_emb=None):
        h = self.ds_conv(x)
        if self.mlp is not None and time_emb is not None:
            condition = self.mlp(time_emb)
            h = h + condition.expand_dims(-1).expand_dims(-1)
        h = self.net(h)
        return h + self.res_conv(x)


class Attention(nn.Cell):
    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, pad_mode="valid", has_bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1, pad_mode="valid", has_bias=True)

    def construct(self, x):
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(x).chunk(3, 1)
        q, k, v = rearrange(self.heads, q), rearrange(self.heads, k), rearrange(self.heads, v)
        q = q * self.scale
        sim = ops.bmm(q.swapaxes(2, 3), k)
        attn = ops.softmax(sim, axis=-1)
        out = ops.bmm(attn, v.swapaxes(2, 3))
        out = out.swapaxes(-1, -2).reshape((b, -1, h, w))
        return self.to_out(out)


class LayerNorm(nn.Cell):
    def __init__(self, dim):
        super().__init__()
        self.g = Parameter(initializer("ones", (1, dim, 1, 1)), name="g")

    def construct(self, x):
        eps = 1e-5
        var = x.var(1, keepdims=True)
        mean = x.mean(1, keep_dims=True)
        return (x - mean) * rsqrt(var + eps) * self.g


class LinearAttention(nn.Cell):
    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, pad_mode="valid", has_bias=False)
        self.to_out = nn.SequentialCell(nn.Conv2d(hidden_dim, dim, 1, pad_mode="valid", has_bias=True),
                                        LayerNorm(dim))

    def construct(self, x):
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(x).chunk(3, 1)
        q, k, v = rearrange(self.heads, q), rearrange(self.heads, k), rearrange(self.heads, v)
        q = ops.softmax(q, -2)
        k = ops.softmax(k, -1)
        q = q * self.scale
        v = v / (h * w)
        context = ops.bmm(k, v.swapaxes(2, 3))
        out = ops.bmm(context.swapaxes(2, 3), q)
        out = out.reshape((b, -1, h, w))
        return self.to_out(out)


class PreNorm(nn.Cell):
    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = nn.GroupNorm(1, dim)

    def construct(self, x):
        return self.fn(self.norm(x))


class Unet(nn.Cell):
    def __init__(self, dim, init_dim=None, out_dim=None, dim_mults=(1, 2, 4, 8), channels=3,
                 with_time_emb=True, convnext_mult=2):
        super().__init__()
        self.channels = channels
        init_dim = dim // 3 * 2 if init_dim is None else init_dim
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3, pad_mode="pad", has_bias=True)
        dims = [init_dim, *map(lambda m: dim * m, dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        block_klass = partial(ConvNextBlock, mult=convnext_mult)
        time_dim = dim * 4
        self.time_mlp = nn.SequentialCell(SinusoidalPositionEmbeddings(dim), nn.Dense(dim, time_dim), nn.GELU(),
                                          nn.Dense(time_dim, time_dim))
        downs, ups = [], []
        num_resolutions = len(in_out)
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= (num_resolutions - 1)
            downs.append(nn.CellList([
                block_klass(dim_in, dim_out, time_emb_dim=time_dim),
                block_klass(dim_out, dim_out, time_emb_dim=time_dim),
                Residual(PreNorm(dim_out, LinearAttention(dim_out))),
                downsample(dim_out) if not is_last else nn.Identity(),
            ]))
        for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            is_last = ind >= (num_resolutions - 1)
            ups.append(nn.CellList([
                block_klass(dim_out * 2, dim_in, time_emb_dim=time_dim),
                block_klass(dim_in, dim_in, time_emb_dim=time_dim),
                Residual(PreNorm(dim_in, LinearAttention(dim_in))),
                upsample(dim_in) if not is_last else nn.Identity(),
            ]))
        self.downs = nn.CellList(downs)   # the tutorial registers downs and ups before the middle
        self.ups = nn.CellList(ups)
        mid_dim = dims[-1]
        self.mid_block1 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)
        self.mid_attn = Residual(PreNorm(mid_dim, Attention(mid_dim)))
        self.mid_block2 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)
        out_dim = channels if out_dim is None else out_dim
        self.final_conv = nn.SequentialCell(block_klass(dim, dim), nn.Conv2d(dim, out_dim, 1))

    def construct(self, x, time):
        x = self.init_conv(x)
        t = self.time_mlp(time)
        h = []
        for block1, block2, attn, down in self.downs:
            x = block1(x, t)
            x = block2(x, t)
            x = attn(x)
            h.append(x)
            x = down(x)
        x = self.mid_block1(x, t)
        x = self.mid_attn(x)
        x = self.mid_block2(x, t)
        len_h = len(h) - 1
        for block1, block2, attn, up in self.ups:
            x = ops.concat((x, h[len_h]), 1)
            len_h -= 1
            x = block1(x, t)
            x = block2(x, t)
            x = attn(x)
            x = up(x)
        return self.final_conv(x)


def copy_weights(src, dst):
    """Copy parameters from one U-Net to the other by position; shapes must agree."""
    src_params, dst_params = src.trainable_params(), dst.trainable_params()
    assert len(src_params) == len(dst_params), (len(src_params), len(dst_params))
    for a, b in zip(src_params, dst_params):
        assert a.shape == b.shape, (a.name, a.shape, b.name, b.shape)
        b.set_data(Tensor(a.asnumpy()))


def make_train_step(model, sched, lr=1e-4):
    """The tutorial's uncompiled step: value_and_grad over p_losses, then Adam (no loss scaling)."""
    from ddpm_ms.diffusion import p_losses  # pylint: disable=import-outside-toplevel
    optimizer = nn.Adam(model.trainable_params(), learning_rate=lr)

    def forward_fn(data, t, noise):
        return p_losses(sched, model, data, t, noise, "huber")

    grad_fn = ms.value_and_grad(forward_fn, None, optimizer.parameters, has_aux=False)

    def train_step(data, t, noise):
        loss, grads = grad_fn(data, t, noise)
        optimizer(grads)
        return loss

    return train_step
