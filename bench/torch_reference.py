"""ddpm_ms.Unet written in PyTorch, for bench/bench.py --torch: the same model, timed in PyTorch eager.

Layer for layer and parameter for parameter it is ``ddpm_ms.Unet`` (MindSpore's defaults: convolutions without
bias unless the tutorial asks for one, tanh-form GELU), so the tutorial U-Net has 2,992,180 parameters here too.
torch is not a dependency of ddpm_ms: ``pip install torch==2.13.0`` to run it.
"""
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def conv(c_in, c_out, k, stride=1, padding=None, groups=1, bias=False):
    return nn.Conv2d(c_in, c_out, k, stride, k // 2 if padding is None else padding, groups=groups, bias=bias)


class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, dim):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1))))

    def forward(self, t):
        emb = t.float()[:, None] * self.freqs[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Block(nn.Module):
    def __init__(self, dim, dim_out, groups):
        super().__init__()
        self.proj = conv(dim, dim_out, 3)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim, dim_out, time_emb_dim=None, groups=8):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2)) if time_emb_dim else None
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = conv(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, t=None):
        scale_shift = None
        if self.mlp is not None and t is not None:
            scale_shift = self.mlp(t)[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, scale_shift)) + self.res_conv(x)


class ConvNextBlock(nn.Module):
    def __init__(self, dim, dim_out, time_emb_dim=None, mult=2):
        super().__init__()
        self.mlp = nn.Sequential(nn.GELU("tanh"), nn.Linear(time_emb_dim, dim)) if time_emb_dim else None
        self.ds_conv = conv(dim, dim, 7, groups=dim)
        self.net = nn.Sequential(nn.GroupNorm(1, dim), conv(dim, dim_out * mult, 3), nn.GELU("tanh"),
                                 nn.GroupNorm(1, dim_out * mult), conv(dim_out * mult, dim_out, 3))
        self.res_conv = conv(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, t=None):
        h = self.ds_conv(x)
        if self.mlp is not None and t is not None:
            h = h + self.mlp(t)[:, :, None, None]
        return self.net(h) + self.res_conv(x)


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.scale, self.heads = dim_head ** -0.5, heads
        self.to_qkv = conv(dim, heads * dim_head * 3, 1)
        self.to_out = conv(heads * dim_head, dim, 1, bias=True)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        attn = torch.softmax((q * self.scale).transpose(2, 3) @ k, dim=-1)
        out = (attn @ v.transpose(2, 3)).transpose(2, 3).reshape(b, -1, h, w)
        return self.to_out(out)


class LayerNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.g, self.eps = nn.Parameter(torch.ones(1, dim, 1, 1)), eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = ((x - mean) ** 2).mean(1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g


class LinearAttention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.scale, self.heads = dim_head ** -0.5, heads
        self.to_qkv = conv(dim, heads * dim_head * 3, 1)
        self.to_out = nn.Sequential(conv(heads * dim_head, dim, 1, bias=True), LayerNorm(dim))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = k @ v.transpose(2, 3)
        out = context.transpose(2, 3) @ q
        return self.to_out(out.reshape(b, -1, h, w))


class PreNormResidual(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.fn, self.norm = fn, nn.GroupNorm(1, dim)

    def forward(self, x):
        return self.fn(self.norm(x)) + x


class Stage(nn.Module):
    def __init__(self, block1, block2, dim, resample, heads, dim_head):
        super().__init__()
        self.block1, self.block2, self.resample = block1, block2, resample
        self.attn = PreNormResidual(dim, LinearAttention(dim, heads, dim_head))

    def forward(self, x, t):
        x = self.attn(self.block2(self.block1(x, t), t))
        return x, self.resample(x)


class Unet(nn.Module):
    """Same constructor arguments as ddpm_ms.Unet (unconditional)."""

    def __init__(self, dim, dim_mults=(1, 2, 4), channels=1, block_type="convnext", convnext_mult=2,
                 resnet_groups=8, attn_heads=4, attn_dim_head=32, init_dim=None):
        super().__init__()
        init_dim = dim // 3 * 2 if init_dim is None else init_dim
        self.init_conv = conv(channels, init_dim, 7, bias=True)
        dims = [init_dim, *[dim * m for m in dim_mults]]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = dim * 4

        def block(d_in, d_out, tdim):
            if block_type == "convnext":
                return ConvNextBlock(d_in, d_out, tdim, convnext_mult)
            return ResnetBlock(d_in, d_out, tdim, resnet_groups)

        self.time_mlp = nn.Sequential(SinusoidalPositionEmbeddings(dim), nn.Linear(dim, time_dim), nn.GELU("tanh"),
                                      nn.Linear(time_dim, time_dim))
        attn = (attn_heads, attn_dim_head)
        n = len(in_out)
        self.downs = nn.ModuleList([
            Stage(block(a, b, time_dim), block(b, b, time_dim), b,
                  conv(b, b, 4, 2, 1) if i < n - 1 else nn.Identity(), *attn) for i, (a, b) in enumerate(in_out)])
        self.ups = nn.ModuleList([
            Stage(block(b * 2, a, time_dim), block(a, a, time_dim), a, nn.ConvTranspose2d(a, a, 4, 2, 1, bias=False),
                  *attn) for a, b in reversed(in_out[1:])])
        mid = dims[-1]
        self.mid_block1 = block(mid, mid, time_dim)
        self.mid_attn = PreNormResidual(mid, Attention(mid, *attn))
        self.mid_block2 = block(mid, mid, time_dim)
        self.final_block = block(dim, dim, None)
        self.final_conv = conv(dim, channels, 1)

    def forward(self, x, time):
        x = self.init_conv(x)
        t = self.time_mlp(time)
        skips = []
        for stage in self.downs:
            skip, x = stage(x, t)
            skips.append(skip)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t)), t)
        for stage in self.ups:
            _, x = stage(torch.cat((x, skips.pop()), dim=1), t)
        return self.final_conv(self.final_block(x))


def count_params(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def measure_train(model_kw, batch, steps, timesteps=200, compiled=False):
    """Train img/s of the eps-prediction Huber loss with Adam, after one warm-up step (``compiled``: the model and
    the optimizer step under torch.compile, inductor, timed after three warm-up steps, which compile)."""
    import time  # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    net = Unet(**model_kw)
    params = count_params(net)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    model = torch.compile(net) if compiled else net
    opt_step = torch.compile(opt.step) if compiled else opt.step
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32))
    t = torch.from_numpy(rng.integers(0, timesteps, batch))
    noise = torch.randn_like(x0)
    betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float()
    a = abar[t][:, None, None, None]

    def step():
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.smooth_l1_loss(model(x_t, t), noise)
        opt.zero_grad()
        loss.backward()
        opt_step()
        return loss

    t0 = time.perf_counter()
    for _ in range(3 if compiled else 1):
        step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {"img_per_s": batch / dt, "s_per_step": dt, "params": params, "first_step_s": warm}


def measure_sample(model_kw, batch, steps, total_steps=200):
    """Seconds for ``total_steps`` DDPM steps (eq. 11, the tutorial's p_sample) on ``batch`` images."""
    import time  # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    net = Unet(**model_kw).eval()
    betas = torch.linspace(1e-4, 0.02, total_steps, dtype=torch.float64)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    coef = (betas / (1 - abar).sqrt()).float()
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        def one(i):
            nonlocal x
            t = torch.full((batch,), i, dtype=torch.long)
            mean = (x - coef[i] * net(x, t)) / alphas[i].sqrt().float()
            x = mean + betas[i].sqrt().float() * torch.randn_like(x)
        one(total_steps - 1)
        t0 = time.perf_counter()
        for i in range(steps):
            one(total_steps - 2 - i)
        per = (time.perf_counter() - t0) / steps
    return {"seconds": per * total_steps, "measured_steps": steps, "of_steps": total_steps}


def measure_generate(model_kw, num, batch, steps=20, total_steps=200, compiled=False):
    """Seconds for ``num`` images with ``steps`` DPM-Solver++(2M) SDE steps (ddpm_ms.samplers._dpmpp_2m, eta 1;
    uniform timesteps, x0 clipped to [-1, 1]) in batches of ``batch``, a plain loop as a notebook would write it;
    ``compiled``: the network under torch.compile, timed after one batch (which compiles)."""
    import time  # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    net = Unet(**model_kw).eval()
    model = torch.compile(net) if compiled else net
    betas = np.linspace(1e-4, 0.02, total_steps)
    ab = np.cumprod(1 - betas)
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha) - np.log(sigma)
    ts = np.round(np.linspace(total_steps - 1, 0, steps)).astype(np.int64)

    def one_batch(n):
        x = torch.randn(n, model_kw.get("channels", 1), 28, 28)
        x0_prev = h_prev = None
        with torch.no_grad():
            for i, t in enumerate(ts):
                eps = model(x, torch.full((n,), int(t), dtype=torch.long))
                x0 = ((x - sigma[t] * eps) / alpha[t]).clamp(-1, 1)
                if i + 1 == len(ts):
                    return x0
                s = ts[i + 1]
                h = lam[s] - lam[t]
                d = x0 if x0_prev is None else x0 + 0.5 / (h_prev / h) * (x0 - x0_prev)
                x = (sigma[s] / sigma[t] * np.exp(-h) * x + alpha[s] * -np.expm1(-2 * h) * d
                     + sigma[s] * np.sqrt(-np.expm1(-2 * h)) * torch.randn_like(x))
                x0_prev, h_prev = x0, h
        return x

    t0 = time.perf_counter()
    one_batch(batch)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(-(-num // batch)):
        one_batch(batch)
    return {"seconds": time.perf_counter() - t0, "num": num, "batch": batch, "of_steps": steps,
            "measured_steps": steps, "first_batch_s": first}
