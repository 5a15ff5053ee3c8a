"""Random networks from a grammar of blocks, for property-based tests of fxprune.

A drawn :class:`NetSpec` is plain data (block kinds and small option dicts), so a
failing example prints as something a person can read and rebuild; :func:`build`
turns a spec into a plain, FX-traceable ``nn.Module`` deterministically (weights and
BN running statistics come from ``spec.seed``).

Shrinking: block kinds are drawn with ``st.sampled_from(KINDS)`` (the simplest kind,
a conv, first), counts and widths with ``st.integers`` (shrinking towards the small
end), so a failure shrinks towards few, narrow, simple blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

MIN_C, MAX_C = 4, 32
CLASSES = 5


@dataclass(frozen=True)
class NetSpec:
    batch: int
    size: int  # input is batch x 3 x size x size
    stem: dict  # {"cout", "k", "bias"}
    blocks: tuple  # ((kind, opts), ...)
    head: tuple  # (kind, opts)
    seed: int

    def input(self, batch: int | None = None, seed: int | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return torch.randn(self.batch if batch is None else batch, 3, self.size, self.size, generator=gen)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------
# blocks: each kind has a drawer (draw, c) -> (opts, c_out) and a builder (c, opts) -> module
# ---------------------------------------------------------------------------------------------
ACTS = ("relu", "gelu", "silu", "hardswish", "siggate", "relu_inplace", "relu6", "leaky", "prelu")


def make_act(name: str, c: int = 1) -> nn.Module:
    if name == "siggate":
        return SigmoidGate()
    if name == "relu_inplace":
        return nn.ReLU(inplace=True)
    if name == "prelu":  # one slope per channel
        return nn.PReLU(c, init=0.1)
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "relu6": nn.ReLU6,
            "leaky": nn.LeakyReLU}[name]()


class SigmoidGate(nn.Module):
    """x * sigmoid(x): a zero channel becomes sigmoid(0) = 0.5 before the multiply makes it zero again."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def conv(cin, cout, k=3, bias=True, groups=1):
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias, groups=groups)


def _width(lo=MIN_C, hi=MAX_C):
    return st.integers(lo, hi)


def draw_conv(draw, c):
    cout = draw(_width())
    return {"cout": cout, "k": draw(st.sampled_from([1, 3])), "bias": draw(st.booleans())}, cout


def build_conv(c, o):
    return conv(c, o["cout"], o["k"], o["bias"])


def draw_bn(draw, c):
    return {}, c


def build_bn(c, o):
    return nn.BatchNorm2d(c)


def draw_gn(draw, c):
    return {"groups": draw(st.sampled_from(divisors(c)))}, c


def build_gn(c, o):
    return nn.GroupNorm(o["groups"], c, affine=True)


def draw_in(draw, c):
    return {}, c


def build_in(c, o):
    return nn.InstanceNorm2d(c, affine=True)


def draw_act(draw, c):
    return {"act": draw(st.sampled_from(ACTS))}, c


def build_act(c, o):
    return make_act(o["act"], c)


def draw_dropout(draw, c):
    return {"2d": draw(st.booleans())}, c


def build_dropout(c, o):
    return nn.Dropout2d(0.3) if o["2d"] else nn.Dropout(0.3)


def draw_pool(draw, c):
    return {"max": draw(st.booleans())}, c


def build_pool(c, o):  # stride 1, same spatial size
    return nn.MaxPool2d(3, 1, 1) if o["max"] else nn.AvgPool2d(3, 1, 1)


class Residual(nn.Module):
    """relu(branch(x) + shortcut(x)); branch = conv-bn-act-conv-bn, shortcut = identity or 1x1 conv-bn."""

    def __init__(self, c, o):
        super().__init__()
        mid, cout = o["mid"], o["cout"]
        self.conv1 = conv(c, mid, o["k"], bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = make_act(o["act"], mid)
        self.conv2 = conv(mid, cout, o["k"], bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(conv(c, cout, 1, bias=False), nn.BatchNorm2d(cout)) if o["proj"] else None
        self.op = o.get("op", "add")

    def forward(self, x):
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        s = x if self.proj is None else self.proj(x)
        if self.op == "sub":
            return F.relu(y - s)
        if self.op == "iadd":
            y += s
            return F.relu(y)
        return F.relu(y + s)


def draw_res(draw, c):
    proj = draw(st.booleans())
    cout = draw(_width()) if proj else c
    o = {"proj": proj, "cout": cout, "mid": draw(_width()), "k": draw(st.sampled_from([1, 3])),
         "act": draw(st.sampled_from(ACTS)), "op": draw(st.sampled_from(["add", "iadd", "sub"]))}
    return o, cout


class Concat(nn.Module):
    """cat([act(conv_a(x)), conv_b(x) or x], dim=1)."""

    def __init__(self, c, o):
        super().__init__()
        self.a = nn.Sequential(conv(c, o["a"], o["k"]), make_act(o["act"], o["a"]))
        self.b = None if o["b"] == 0 else conv(c, o["b"], 1, bias=False)
        self.dim = o.get("dim", 1)

    def forward(self, x):
        return torch.cat([self.a(x), x if self.b is None else self.b(x)], dim=self.dim)


def draw_cat(draw, c):
    a = draw(st.integers(2, 16))
    b = draw(st.sampled_from([0] + list(range(2, 17))))  # 0: the input itself is the second piece
    if a + (b or c) > MAX_C:
        b = 2
        a = min(a, MAX_C - 2)
    o = {"a": a, "b": b, "k": draw(st.sampled_from([1, 3])), "act": draw(st.sampled_from(ACTS)),
         "dim": draw(st.sampled_from([1, -3]))}
    return o, a + (b or c)


class SplitCat(nn.Module):
    """Split channels into two paths (chunk / split with sizes / split by size), transform, cat back."""

    def __init__(self, c, o):
        super().__init__()
        self.o = dict(o)
        first = c // 2 if o["how"] in ("chunk", "method_chunk", "split_int") else o["first"]
        self.sizes = (first, c - first)
        self.p0 = nn.Sequential(conv(first, o["d0"], o["k"]), make_act(o["act"], o["d0"])) if o["d0"] else None
        self.p1 = conv(c - first, o["d1"], 1) if o["d1"] else None

    def forward(self, x):
        how = self.o["how"]
        if how == "chunk":
            a, b = torch.chunk(x, 2, dim=1)
        elif how == "method_chunk":
            a, b = x.chunk(2, 1)
        elif how == "split_int":
            a, b = x.split(self.sizes[0], dim=1)
        else:
            a, b = torch.split(x, list(self.sizes), dim=1)
        a = a if self.p0 is None else self.p0(a)
        b = b if self.p1 is None else self.p1(b)
        return torch.cat([b, a] if self.o["swap"] else [a, b], dim=1)


def draw_split(draw, c):
    hows = ["split_list"] + (["chunk", "method_chunk", "split_int"] if c % 2 == 0 else [])
    how = draw(st.sampled_from(hows))
    first = draw(st.integers(1, c - 1)) if how == "split_list" else c // 2
    d0 = draw(st.sampled_from([0] + list(range(2, 17))))
    d1 = draw(st.sampled_from([0] + list(range(2, 17))))
    out = (d0 or first) + (d1 or c - first)
    if out > MAX_C:
        d0, d1 = 0, 0
        out = c
    o = {"how": how, "first": first, "d0": d0, "d1": d1, "k": draw(st.sampled_from([1, 3])),
         "act": draw(st.sampled_from(ACTS)), "swap": draw(st.booleans())}
    return o, out


def draw_gconv(draw, c):
    g = draw(st.sampled_from(divisors(c)))
    multiples = [m for m in range(g, MAX_C + 1, g) if m >= MIN_C]
    cout = draw(st.sampled_from(multiples))
    return {"groups": g, "cout": cout, "k": draw(st.sampled_from([1, 3])), "bias": draw(st.booleans())}, cout


def build_gconv(c, o):
    return conv(c, o["cout"], o["k"], o["bias"], groups=o["groups"])


def draw_dwconv(draw, c):
    mult = draw(st.sampled_from([1, 2])) if 2 * c <= MAX_C else 1
    return {"mult": mult, "k": draw(st.sampled_from([3, 1])), "bias": draw(st.booleans())}, c * mult


def build_dwconv(c, o):
    return conv(c, c * o["mult"], o["k"], o["bias"], groups=c)


class Shuffle(nn.Module):
    """ShuffleNet channel shuffle, sizes read from x.size()."""

    def __init__(self, c, o):
        super().__init__()
        self.g = o["groups"]

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, self.g, c // self.g, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(n, c, h, w)


def draw_shuffle(draw, c):
    return {"groups": draw(st.sampled_from([d for d in divisors(c) if d > 1]))}, c  # c >= 2: c divides itself


class SqueezeExcite(nn.Module):
    def __init__(self, c, o):
        super().__init__()
        self.mean = o["mean"]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, o["r"], 1)
        self.fc2 = nn.Conv2d(o["r"], c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True) if self.mean else self.pool(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


def draw_se(draw, c):
    return {"r": draw(st.integers(1, max(1, c))), "mean": draw(st.booleans())}, c


class LayerScale(nn.Module):
    def __init__(self, c, o):
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(c, 1, 1))

    def forward(self, x):
        return x * self.gamma


class ChannelSlice(nn.Module):
    def __init__(self, c, o):
        super().__init__()
        start, stop = o.get("start", 0), o.get("start", 0) + o["k"]
        if o.get("neg", False):  # the same channels, bounds counted from the end
            start, stop = start - c, (stop - c) or None
        self.start, self.stop = start, stop

    def forward(self, x):
        return x[:, self.start: self.stop]


def draw_slice(draw, c):
    if c < 3:
        return {"k": c}, c
    k = draw(st.integers(2, c - 1))
    return {"k": k, "start": draw(st.integers(0, c - k)), "neg": draw(st.booleans())}, k


# ---- blocks beyond the brief's list: constants, spatial changes, channels-last MLPs, gates ----
CONST_OPS = ("sigmoid", "hardsigmoid", "plus1", "rsub", "clamp_min", "exp_neg_sq")


class ConstOp(nn.Module):
    """f(0) != 0: a zeroed channel becomes a constant that its consumers must fold (or keep)."""

    def __init__(self, c, o):
        super().__init__()
        self.op = o["op"]

    def forward(self, x):
        if self.op == "sigmoid":
            return torch.sigmoid(x)
        if self.op == "hardsigmoid":
            return F.hardsigmoid(x)
        if self.op == "plus1":
            return x + 1
        if self.op == "rsub":
            return 1 - x
        if self.op == "clamp_min":
            return x.clamp(min=0.25)
        return torch.exp(-x * x)


def draw_const(draw, c):
    return {"op": draw(st.sampled_from(CONST_OPS))}, c


class Down(nn.Module):
    """Halve the spatial size: stride-2 conv (c -> cout), max pool or avg pool."""

    def __init__(self, c, o):
        super().__init__()
        self.how = o["how"]
        self.conv = nn.Conv2d(c, o["cout"], 3, 2, 1, bias=o["bias"]) if self.how == "conv" else None

    def forward(self, x):
        if self.how == "conv":
            return self.conv(x)
        return F.max_pool2d(x, 2) if self.how == "max" else F.avg_pool2d(x, 2)


def draw_down(draw, c):
    how = draw(st.sampled_from(["conv", "max", "avg"]))
    cout = draw(_width()) if how == "conv" else c
    return {"how": how, "cout": cout, "bias": draw(st.booleans())}, cout


class Up(nn.Module):
    """Double the spatial size: interpolation (c -> c) or a stride-2 transposed conv (c -> cout)."""

    def __init__(self, c, o):
        super().__init__()
        self.mode = o["mode"]
        self.convt = nn.ConvTranspose2d(c, o["cout"], 4, 2, 1, bias=o["bias"]) if self.mode == "convT" else None

    def forward(self, x):
        if self.mode == "convT":
            return self.convt(x)
        return F.interpolate(x, scale_factor=2.0, mode=self.mode)


def draw_up(draw, c):
    mode = draw(st.sampled_from(["nearest", "bilinear", "convT"]))
    cout = draw(_width()) if mode == "convT" else c
    return {"mode": mode, "cout": cout, "bias": draw(st.booleans())}, cout


class ChannelsLastMLP(nn.Module):
    """ConvNeXt-style: permute to NHWC, [LayerNorm], Linear-GELU-Linear, permute back, [+ x]."""

    def __init__(self, c, o):
        super().__init__()
        self.norm = nn.LayerNorm(c) if o["ln"] else None
        self.fc1 = nn.Linear(c, o["hidden"])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(o["hidden"], c)
        self.res = o["res"]

    def forward(self, x):
        y = x.permute(0, 2, 3, 1)
        if self.norm is not None:
            y = self.norm(y)
        y = self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y if self.res else y


def draw_clmlp(draw, c):
    return {"hidden": draw(_width(2, 32)), "ln": draw(st.booleans()), "res": draw(st.booleans())}, c


class SELinear(nn.Module):
    """The original SENet spelling: pool, flatten, Linear-ReLU-Linear-sigmoid, view(b, c, 1, 1), mul."""

    def __init__(self, c, o):
        super().__init__()
        self.fc1 = nn.Linear(c, o["r"])
        self.fc2 = nn.Linear(o["r"], c)
        self.gate = nn.Hardsigmoid() if o["hard"] else nn.Sigmoid()

    def forward(self, x):
        b, c, _, _ = x.size()
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = self.gate(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        return x * s.expand_as(x)


def draw_sel(draw, c):
    return {"r": draw(st.integers(1, max(1, c))), "hard": draw(st.booleans())}, c


class GlobalContext(nn.Module):
    """x + conv1x1(gap(x)): a per-channel constant broadcast over space."""

    def __init__(self, c, o):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=o["bias"])

    def forward(self, x):
        return x + self.conv(x.mean((2, 3), keepdim=True))


def draw_gc(draw, c):
    return {"bias": draw(st.booleans())}, c


class MulGate(nn.Module):
    """conv_a(x) * act(conv_b(x)) (GLU-like)."""

    def __init__(self, c, o):
        super().__init__()
        self.a = conv(c, o["cout"], o["k"])
        self.b = conv(c, o["cout"], 1)
        self.gate = o["gate"]

    def forward(self, x):
        g = self.b(x)
        g = torch.sigmoid(g) if self.gate == "sigmoid" else F.gelu(g)
        return self.a(x) * g


def draw_mulgate(draw, c):
    cout = draw(_width())
    return {"cout": cout, "k": draw(st.sampled_from([1, 3])), "gate": draw(st.sampled_from(["sigmoid", "gelu"]))}, cout


class Halves(nn.Module):
    """Chunk channels in two and combine the halves elementwise: channel i is tied to channel c/2 + i."""

    def __init__(self, c, o):
        super().__init__()
        self.op = o["op"]

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a + b if self.op == "add" else a * b


def draw_halves(draw, c):
    if c % 2:
        return {"op": "odd"}, c
    return {"op": draw(st.sampled_from(["add", "mul"]))}, c // 2


class HalvesOrSame(Halves):
    def forward(self, x):
        return x if self.op == "odd" else super().forward(x)


class SpatialAttention(nn.Module):
    """CBAM: mean and max over channels -> conv -> sigmoid -> x * a (channel-sensitive reductions)."""

    def __init__(self, c, o):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        a = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(a))



class TokenMix(nn.Module):
    """MLP-Mixer token mixing: Linear over the spatial positions; channels are a *leading* dim of the Linear."""

    def __init__(self, c, o):
        super().__init__()
        t = o["side"] * o["side"]
        self.fc1 = nn.Linear(t, o["hidden"], bias=o["bias"])
        self.fc2 = nn.Linear(o["hidden"], t, bias=o["bias"])

    def forward(self, x):
        n, c, h, w = x.shape
        y = self.fc2(F.gelu(self.fc1(x.flatten(2))))
        return x + y.view(n, c, h, w)


def draw_mixer(draw, c, side):
    return {"side": side, "hidden": draw(_width(2, 16)), "bias": draw(st.booleans())}, c


class FoldConv(nn.Module):
    """Channels folded into the batch dim: one shared 3x3 filter applied to every channel alone."""

    def __init__(self, c, o):
        super().__init__()
        self.shared = nn.Conv2d(1, 1, 3, padding=1, bias=o["bias"])

    def forward(self, x):
        n, c, h, w = x.shape
        return self.shared(x.reshape(n * c, 1, h, w)).reshape(n, c, h, w)


def draw_fold(draw, c):
    return {"bias": draw(st.booleans())}, c


class TransposedNorm(nn.Module):
    """BatchNorm over the H dim of a transposed tensor: the channels sit at dim 2 while it runs."""

    def __init__(self, c, o):
        super().__init__()
        self.bn = nn.BatchNorm2d(o["side"])

    def forward(self, x):
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


def draw_tnorm(draw, c, side):
    return {"side": side}, c


class TokenAttention(nn.Module):
    """ViT-style: pixels as tokens, [LayerNorm], nn.MultiheadAttention, [+ x], back to NCHW."""

    def __init__(self, c, o):
        super().__init__()
        self.norm = nn.LayerNorm(c) if o["ln"] else None
        self.attn = nn.MultiheadAttention(c, o["heads"], bias=o["bias"], batch_first=o["batch_first"])
        self.res, self.batch_first = o["res"], o["batch_first"]

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        y = self.norm(t) if self.norm is not None else t
        if not self.batch_first:
            y = y.transpose(0, 1)
        y = self.attn(y, y, y, need_weights=False)[0]
        if not self.batch_first:
            y = y.transpose(0, 1)
        t = t + y if self.res else y
        return t.transpose(1, 2).reshape(n, c, h, w)


def draw_mha(draw, c):
    return {"heads": draw(st.sampled_from(divisors(c))), "ln": draw(st.booleans()), "bias": draw(st.booleans()),
            "batch_first": draw(st.booleans()), "res": draw(st.booleans())}, c


class EinsumAttention(nn.Module):
    """Hand-written attention over pixels: 1x1-conv q/k/v heads, einsum with an explicit scale, 1x1 projection."""

    def __init__(self, c, o):
        super().__init__()
        inner = o["heads"] * o["dim"]
        self.heads, self.scale = o["heads"], o["dim"] ** -0.5
        self.qkv = nn.Conv2d(c, 3 * inner, 1, bias=o["bias"])
        self.proj = nn.Conv2d(inner, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # (N, heads*dim, HW) each
        q, k, v = (t.unflatten(1, (self.heads, -1)) for t in (q, k, v))  # (N, heads, dim, HW)
        attn = torch.einsum("nhdi,nhdj->nhij", q * self.scale, k).softmax(-1)
        out = torch.einsum("nhij,nhdj->nhdi", attn, v).flatten(1, 2)
        return x + self.proj(out.reshape(n, -1, h, w))


def draw_einsum(draw, c):
    return {"heads": draw(st.integers(1, 3)), "dim": draw(st.integers(1, 6)), "bias": draw(st.booleans())}, c


class SdpaAttention(nn.Module):
    """timm-style attention over pixels: one qkv Linear, reshape to heads, SDPA with its default scale."""

    def __init__(self, c, o):
        super().__init__()
        self.heads, inner = o["heads"], o["heads"] * o["dim"]
        self.qkv = nn.Linear(c, 3 * inner, bias=o["bias"])
        self.proj = nn.Linear(inner, c)

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(t).reshape(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, -1)
        return x + self.proj(y).transpose(1, 2).reshape(n, c, h, w)


class WhereGate(nn.Module):
    """torch.where on a comparison: a hand-written leaky ReLU, a mask to zero, or a non-zero fill."""

    def __init__(self, c, o):
        super().__init__()
        self.fill = o["fill"]

    def forward(self, x):
        if self.fill == "scaled":
            return torch.where(x > 0, x, 0.1 * x)
        if self.fill == "zero":
            return x.where(x.ge(0.5), torch.zeros_like(x))
        return torch.where(x < -0.5, -1.0, x)


def draw_where(draw, c):
    return {"fill": draw(st.sampled_from(["scaled", "zero", "minus1"]))}, c



class PadConv(nn.Module):
    """A padding module, then a 3x3 conv without padding: the spatial size is kept."""

    def __init__(self, c, o):
        super().__init__()
        self.pad = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d,
                    "circular": nn.CircularPad2d}.get(o["how"], lambda p: nn.ConstantPad2d(p, o["value"]))(1)
        self.conv = nn.Conv2d(c, o["cout"], 3)

    def forward(self, x):
        return self.conv(self.pad(x))


def draw_pad(draw, c, side):
    hows = ["replicate", "constant"] + (["circular"] if side >= 1 else []) + (["reflect"] if side >= 2 else [])
    cout = draw(_width())
    return {"how": draw(st.sampled_from(hows)), "value": draw(st.sampled_from([0.0, 0.5])), "cout": cout}, cout


class PixelShuffleConv(nn.Module):
    """pixel_shuffle(r) -> 3x3 conv on the finer grid -> pixel_unshuffle(r): channels in runs of r²."""

    def __init__(self, c, o):
        super().__init__()
        r = o["r"]
        self.up, self.down = nn.PixelShuffle(r), nn.PixelUnshuffle(r)
        self.conv = nn.Conv2d(c // (r * r), o["mid"], 3, padding=1)

    def forward(self, x):
        return self.down(self.conv(self.up(x)))


def draw_pixshuf(draw, c):
    r = draw(st.sampled_from([2, 1])) if c % 4 == 0 else 1
    mid = draw(st.integers(1, 4))
    return {"r": r, "mid": mid}, mid * r * r


class GluConv(nn.Module):
    """1x1 conv to twice the width, then GLU over the channels (a gated linear unit)."""

    def __init__(self, c, o):
        super().__init__()
        self.conv = nn.Conv2d(c, 2 * o["cout"], 1)
        self.glu = nn.GLU(1)

    def forward(self, x):
        return self.glu(self.conv(x))


def draw_glu(draw, c):
    cout = draw(_width())
    return {"cout": cout}, cout


BLOCKS: dict[str, tuple[Callable, Callable]] = {
    "conv": (draw_conv, build_conv),
    "bn": (draw_bn, build_bn),
    "act": (draw_act, build_act),
    "res": (draw_res, Residual),
    "cat": (draw_cat, Concat),
    "split": (draw_split, SplitCat),
    "gconv": (draw_gconv, build_gconv),
    "dwconv": (draw_dwconv, build_dwconv),
    "shuffle": (draw_shuffle, Shuffle),
    "se": (draw_se, SqueezeExcite),
    "layerscale": (lambda draw, c: ({}, c), LayerScale),
    "slice": (draw_slice, ChannelSlice),
    "gn": (draw_gn, build_gn),
    "in": (draw_in, build_in),
    "dropout": (draw_dropout, build_dropout),
    "pool": (draw_pool, build_pool),
    "const": (draw_const, ConstOp),
    "down": (draw_down, Down),
    "up": (draw_up, Up),
    "clmlp": (draw_clmlp, ChannelsLastMLP),
    "sel": (draw_sel, SELinear),
    "gc": (draw_gc, GlobalContext),
    "mulgate": (draw_mulgate, MulGate),
    "halves": (draw_halves, HalvesOrSame),
    "cbam": (lambda draw, c: ({}, c), SpatialAttention),
    "mixer": (draw_mixer, TokenMix),
    "fold": (draw_fold, FoldConv),
    "tnorm": (draw_tnorm, TransposedNorm),
    "mha": (draw_mha, TokenAttention),
    "einsum": (draw_einsum, EinsumAttention),
    "sdpa": (draw_einsum, SdpaAttention),
    "where": (draw_where, WhereGate),
    "pad": (draw_pad, PadConv),
    "pixshuf": (draw_pixshuf, PixelShuffleConv),
    "glu": (draw_glu, GluConv),
}
NEEDS_SIDE = {"mixer", "tnorm", "pad"}  # their drawers also get the spatial size
SPATIAL = {"down": lambda s: s // 2, "up": lambda s: s * 2}
KINDS = tuple(BLOCKS)


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------
def _classifier(features: int, hidden: int) -> nn.Module:
    if hidden:
        return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))
    return nn.Linear(features, CLASSES)


class GapHead(nn.Module):
    """Global average pool, flatten (several spellings), [MLP], linear."""

    def __init__(self, c, o, size):
        super().__init__()
        self.flat = o["flat"]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _classifier(c, o["hidden"])

    def forward(self, x):
        if self.flat == "flatten":
            x = torch.flatten(self.pool(x), 1)
        elif self.flat == "view":
            x = self.pool(x).view(x.size(0), -1)
        else:
            x = x.mean((2, 3))
        return self.fc(x)


class FlattenHead(nn.Module):
    """conv -> [pool to 2x2] -> flatten -> [MLP] -> linear: one channel maps to a run of features."""

    def __init__(self, c, o, size):
        super().__init__()
        self.conv = conv(c, o["cout"], 1)
        self.pool = nn.AdaptiveAvgPool2d(2) if o["pool"] else None
        side = 2 if o["pool"] else size
        self.flatten = nn.Flatten()
        self.fc = _classifier(o["cout"] * side * side, o["hidden"])

    def forward(self, x):
        x = F.relu(self.conv(x))
        if self.pool is not None:
            x = self.pool(x)
        return self.fc(self.flatten(x))


class TokenHead(nn.Module):
    """conv -> tokens (flatten(2).transpose(1, 2)) -> Linear-GELU-Linear [+ residual] -> mean -> head."""

    def __init__(self, c, o, size):
        super().__init__()
        d = o["dim"]
        self.res = o["res"]
        self.embed = nn.Conv2d(c, d, 1)
        self.fc1 = nn.Linear(d, o["mlp"])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(o["mlp"], d if o["res"] else o["out"])
        self.fc = _classifier(d if o["res"] else o["out"], o["hidden"])

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        y = self.fc2(self.act(self.fc1(t)))
        t = t + y if self.res else y
        return self.fc(t.mean(dim=1))


HEADS = {"gap": GapHead, "flatten": FlattenHead, "tokens": TokenHead}


def draw_head(draw, c):
    kind = draw(st.sampled_from(tuple(HEADS)))
    hidden = draw(st.sampled_from([0] + list(range(2, 17))))
    if kind == "gap":
        o = {"flat": draw(st.sampled_from(["flatten", "view", "mean"]))}
    elif kind == "flatten":
        o = {"cout": draw(st.integers(2, 8)), "pool": draw(st.booleans())}
    else:
        o = {"dim": draw(_width(2, 16)), "mlp": draw(_width(2, 32)), "out": draw(_width(2, 16)),
             "res": draw(st.booleans())}
    o["hidden"] = hidden
    return kind, o


# ---------------------------------------------------------------------------------------------
# the net
# ---------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        s = spec.stem
        self.stem = conv(3, s["cout"], s["k"], s["bias"])
        c = s["cout"]
        blocks = []
        for kind, o in spec.blocks:
            blocks.append(BLOCKS[kind][1](c, o))
            c = block_out(kind, c, o)
        self.blocks = nn.Sequential(*blocks)
        kind, o = spec.head
        self.head = HEADS[kind](c, o, spatial_out(spec.blocks, spec.size))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def spatial_out(blocks, size: int) -> int:
    for kind, _ in blocks:
        size = SPATIAL[kind](size) if kind in SPATIAL else size
    return size


def block_out(kind: str, c: int, o: dict) -> int:
    """Output channels of a block (the drawers compute the same; builders must agree)."""
    if kind in ("conv", "gconv", "mulgate"):
        return o["cout"]
    if kind in ("down", "up"):
        return o["cout"]
    if kind == "halves":
        return c if o["op"] == "odd" else c // 2
    if kind == "res":
        return o["cout"]
    if kind == "cat":
        return o["a"] + (o["b"] or c)
    if kind == "split":
        first = c // 2 if o["how"] != "split_list" else o["first"]
        return (o["d0"] or first) + (o["d1"] or c - first)
    if kind == "dwconv":
        return c * o["mult"]
    if kind == "slice":
        return o["k"]
    if kind in ("pad", "glu"):
        return o["cout"]
    if kind == "pixshuf":
        return o["mid"] * o["r"] ** 2
    return c


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial eval-mode norms: random affine params and BN running stats (seeded)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model


def build(spec: NetSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    return randomize(Net(spec), spec.seed).eval()


@st.composite
def net_specs(draw, max_blocks: int = 8, kinds: tuple[str, ...] = KINDS) -> NetSpec:
    batch, size = draw(st.sampled_from([(1, 8), (2, 16)]))
    c = draw(_width())
    stem = {"cout": c, "k": draw(st.sampled_from([3, 1])), "bias": draw(st.booleans())}
    blocks, side = [], size
    for _ in range(draw(st.integers(0, max_blocks))):
        kind = draw(st.sampled_from(kinds))
        if kind == "down" and side < 2 or kind == "up" and side > 8:
            kind = "bn"  # keep the spatial size in [1, 16]
        if kind == "split" and c < 2 or kind == "shuffle" and c < 2:
            kind = "bn"  # a single channel cannot be split or shuffled
        if kind == "in" and side < 2:
            kind = "bn"  # instance statistics need more than one pixel
        o, c_out = BLOCKS[kind][0](draw, c, side) if kind in NEEDS_SIDE else BLOCKS[kind][0](draw, c)
        side = SPATIAL[kind](side) if kind in SPATIAL else side
        assert block_out(kind, c, o) == c_out, (kind, c, o, c_out)
        blocks.append((kind, o))
        c = c_out
    head = draw_head(draw, c)
    assert spatial_out(blocks, size) == side
    return NetSpec(batch, size, stem, tuple(blocks), head, draw(st.integers(0, 2**16)))


def spec_for(kind: str, c: int, o: dict[str, Any], head=("gap", {"flat": "flatten", "hidden": 0}),
             stem_k: int = 3, seed: int = 0, size: int = 8, batch: int = 1) -> NetSpec:
    """A hand-written one-block net: stem conv -> the block -> head."""
    return NetSpec(batch, size, {"cout": c, "k": stem_k, "bias": True}, ((kind, o),), head, seed)
