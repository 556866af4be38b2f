"""ESPNetv2 for semantic segmentation (Mehta et al., CVPR 2019), as released in EdgeNets.

The network is written here from the paper and the released architecture, not copied; its
``state_dict`` keys and shapes are those of EdgeNets' ``ESPNetv2Segmentation`` (dataset
``city``), so the released Cityscapes files load unchanged (:func:`width_from_state_dict` reads
the width ``s`` from them). Encoder: the EESP backbone up to output stride 16 with input
reinforcement (``base_net``, widths s in {0.5, 1.0, 1.25, 1.5, 2.0}); decoder: four efficient
pyramid-pooling stages joined to the encoder levels by gated point-wise fusions, ending at
output stride 2.

Classes: the released Cityscapes networks have 20 outputs, the 19 Cityscapes train ids and then
a background class. The background output is dropped: :meth:`ESPNetv2Seg.forward` returns only
the 19 Cityscapes logits, so ``num_classes`` is 19 everywhere in the project and each pixel gets
its best Cityscapes class, never "background" (the argmax over the 19 is the argmax over the 20
wherever the network does not prefer background). :meth:`ESPNetv2Seg.forward_raw` returns the
released network's full output (all 20 channels at the input size) for checks against it.

Two changes from the release, neither of which alters its numbers where it works:

- any frame size: the released network needs sides divisible by 16 (480x360 fails with "size of
  tensor a (45) must match b (46)" where the decoder upsamples by 2 and adds a skip). The input
  is reflect-padded at the bottom and right to the next multiple of 16 and the outputs are
  cropped back; sizes already divisible by 16 are not padded, and their logits equal the
  release's.
- ONNX export: the pyramid pooling averages over bins of sizes that need not divide the input
  (``adaptive_avg_pool2d`` to 0.1x and from 1.5x), which the TorchScript ONNX exporter refuses.
  While an exporter traces, :func:`adaptive_avg_pool_2d` computes the same bins from the static
  shapes with separable gathers and weights (plain ``AveragePool`` where the bins divide
  evenly); eager runs keep PyTorch's faster kernel. The two agree to float rounding (6e-6 at
  most on the released s=2.0 logits, which reach 22, at 1024x512).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iapc.adapt.preprocessing import IMAGENET_RGB

# Channels after level1..level4 (output strides 2, 4, 8, 16) for each released width s; the
# classification-only levels (stride 32 and the classifier) are not part of the segmentation net.
WIDTH_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
DEFAULT_WIDTH = 2.0
BRANCHES = 4  # parallel dilated branches of every EESP unit
LEVEL3_UNITS, LEVEL4_UNITS = 3, 7  # stride-1 EESP units after the level3 / level4 down-samplers
# Largest receptive field (kernel size of the dilated 3x3) per EESP unit; larger branches fall
# back to a plain 3x3: level2 down-sampler, level3 down-sampler, level3 units and level4
# down-sampler, level4 units.
_RECEPTIVE_LIMIT = {"level2_0": 13, "level3_0": 11, "level3": 9, "level4_0": 9, "level4": 7}
DECODER_CHANNELS = (64, 48, 32)  # 4x, 3x, 2x the 16 base channels of the Cityscapes decoder
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
MIN_PYRAMID_SIZE = 5  # a pyramid level is never smaller than 5x5
STRIDE = 16  # total down-sampling of the encoder: inputs are padded to a multiple of this


def _branch_dilations(receptive_limit: int) -> list[int]:
    """Dilations of the 3x3 depth-wise branches: kernel sizes 3, 5, 7, ... capped at the limit
    (larger ones become 3), in increasing order; a kernel size k is a 3x3 with dilation (k-1)/2."""
    sizes = sorted(k if k <= receptive_limit else 3 for k in (3 + 2 * i for i in range(BRANCHES)))
    return [(k - 1) // 2 for k in sizes]


# --- building blocks whose attribute names give the released state_dict layout ------------------

class _ConvBNAct(nn.Module):
    """conv (no bias) -> BN -> PReLU; keys ``conv``, ``bn``, ``act`` (the encoder's layout)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _ConvBN(nn.Module):
    """conv (no bias) -> BN; keys ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _BNAct(nn.Module):
    """BN -> PReLU; keys ``bn``, ``act``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class _DepthwiseDilated(nn.Module):
    """3x3 depth-wise conv with dilation; key ``conv``."""

    def __init__(self, channels: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, dilation, dilation=dilation,
                              bias=False, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SeqBNAct(nn.Module):
    """BN -> PReLU under key ``br`` as ``0, 1`` (the decoder's layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class _SeqConvBNAct(nn.Module):
    """conv -> BN -> PReLU under key ``cbr`` as ``0, 1, 2`` (the decoder's layout)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2, bias=False, groups=groups),
            nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class _ChannelShuffle(nn.Module):
    """(N, G*C, H, W) -> (N, C*G, H, W): channel g*C + c moves to c*G + g."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # static channel and spatial sizes (-1 for the batch): constant shapes in an ONNX graph
        c, h, w = (int(d) for d in x.shape[1:])
        x = x.reshape(-1, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(-1, c, h, w)


# --- encoder --------------------------------------------------------------------------------------

class EESP(nn.Module):
    """Reduce (grouped 1x1) -> split into dilated depth-wise branches, each added to the previous
    one (hierarchical fusion) -> concatenate -> BN-PReLU -> grouped 1x1 expansion.

    Stride 1: residual add and PReLU, (N, C, H, W) -> (N, C, H, W). Stride 2 (inside a
    down-sampler): the expansion alone, (N, Cin, H, W) -> (N, Cout, ceil(H/2), ceil(W/2)).
    """

    def __init__(self, cin: int, cout: int, stride: int, receptive_limit: int):
        super().__init__()
        if cout % BRANCHES:
            raise ValueError(f"EESP output channels {cout} must divide into {BRANCHES} branches")
        branch = cout // BRANCHES
        self.stride = stride
        self.proj_1x1 = _ConvBNAct(cin, branch, 1, groups=BRANCHES)
        self.spp_dw = nn.ModuleList(_DepthwiseDilated(branch, stride, d)
                                    for d in _branch_dilations(receptive_limit))
        self.conv_1x1_exp = _ConvBN(cout, cout, 1, groups=BRANCHES)
        self.br_after_cat = _BNAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)  # (N, Cout/4, H, W)
        branches = [self.spp_dw[0](reduced)]
        for conv in self.spp_dw[1:]:
            branches.append(conv(reduced) + branches[-1])  # hierarchical feature fusion
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))  # (N, Cout, H/s, W/s)
        if self.stride == 2:
            return out  # the down-sampler adds the pooled input and applies its own PReLU
        if out.shape == x.shape:
            out = out + x
        return self.module_act(out)


class DownSampler(nn.Module):
    """Halves the resolution: [avg-pool(x), EESP_stride2(x)] concatenated on channels, plus a
    projection of the input image pooled to the same size (input reinforcement), then PReLU.

    x: (N, Cin, H, W), image: (N, 3, ceil(H/2), ceil(W/2)) -> (N, Cout, ceil(H/2), ceil(W/2)).
    """

    def __init__(self, cin: int, cout: int, receptive_limit: int):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, 2, receptive_limit)
        self.inp_reinf = nn.Sequential(_ConvBNAct(3, 3, 3), _ConvBN(3, cout, 1))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = torch.cat([_halve(x), self.eesp(x)], 1)  # (N, Cout, H/2, W/2)
        return self.act(out + self.inp_reinf(image))


def _halve(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 2, padding 1 (zeros counted): (N, C, H, W) -> ceil(H/2) x ceil(W/2)."""
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)


class ESPNetv2Encoder(nn.Module):
    """The EESP backbone to output stride 16 (registered as ``base_net``)."""

    def __init__(self, channels: tuple[int, int, int, int]):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.level1 = _ConvBNAct(3, c1, 3, stride=2)
        self.level2_0 = DownSampler(c1, c2, _RECEPTIVE_LIMIT["level2_0"])
        self.level3_0 = DownSampler(c2, c3, _RECEPTIVE_LIMIT["level3_0"])
        self.level3 = nn.ModuleList(EESP(c3, c3, 1, _RECEPTIVE_LIMIT["level3"])
                                    for _ in range(LEVEL3_UNITS))
        self.level4_0 = DownSampler(c3, c4, _RECEPTIVE_LIMIT["level4_0"])
        self.level4 = nn.ModuleList(EESP(c4, c4, 1, _RECEPTIVE_LIMIT["level4"])
                                    for _ in range(LEVEL4_UNITS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W), H and W multiples of 16 -> features at strides 2, 4, 8, 16."""
        # The image pooled by 2 repeatedly feeds each down-sampler (the release pools the image
        # again from full size each time; the chain of pools gives the same tensors).
        image4 = _halve(_halve(x))  # (N, 3, H/4, W/4)
        image8 = _halve(image4)
        image16 = _halve(image8)
        l1 = self.level1(x)  # (N, c1, H/2, W/2)
        l2 = self.level2_0(l1, image4)  # (N, c2, H/4, W/4)
        l3 = self.level3_0(l2, image8)  # (N, c3, H/8, W/8)
        for unit in self.level3:
            l3 = unit(l3)
        l4 = self.level4_0(l3, image16)  # (N, c4, H/16, W/16)
        for unit in self.level4:
            l4 = unit(l4)
        return l1, l2, l3, l4


# --- decoder --------------------------------------------------------------------------------------

def _adaptive_bins(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each of ``size_out`` adaptive-average-pool bins over
    ``size_in``: start = floor(i * I / O), end = ceil((i + 1) * I / O), as PyTorch defines them."""
    i = np.arange(size_out)
    return (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)


def _adaptive_avg_pool_1d(x: torch.Tensor, dim: int, size_out: int) -> torch.Tensor:
    """Adaptive average pooling of (N, C, H, W) along ``dim`` (2 or 3) to ``size_out``.

    Bins that tile the axis evenly are an ``avg_pool2d``; otherwise each output is
    sum_j x[start + j] / length over the at most L samples of its bin: L gathers with constant
    indices (clamped to the axis) and constant weights (0 past the bin's end). Only static
    shapes are used, so the TorchScript ONNX exporter writes Gather/Mul/Add nodes.
    """
    size_in = int(x.shape[dim])  # a constant, also while the ONNX exporter traces
    if size_in == size_out:
        return x
    if size_in % size_out == 0:
        k = size_in // size_out
        kernel = (k, 1) if dim == 2 else (1, k)
        return F.avg_pool2d(x, kernel, kernel)
    starts, ends = _adaptive_bins(size_in, size_out)
    lengths = ends - starts
    out = None
    for j in range(int(lengths.max())):
        index = torch.as_tensor(np.minimum(starts + j, size_in - 1), device=x.device)
        weight = torch.as_tensor(np.where(j < lengths, 1.0 / lengths, 0.0), dtype=x.dtype,
                                 device=x.device)
        weight = weight.view(-1, 1) if dim == 2 else weight  # broadcast over (.., O, W) / (.., O)
        term = x.index_select(dim, index) * weight
        out = term if out is None else out + term
    return out


def adaptive_avg_pool_2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` for (N, C, H, W), exportable to ONNX for any sizes.

    The bins of the 2-D pool are products of the per-axis bins, so the rectangle mean is the
    mean over rows of the mean over columns: equal up to float rounding (~1e-7 relative).
    """
    return _adaptive_avg_pool_1d(_adaptive_avg_pool_1d(x, 2, size[0]), 3, size[1])


def _pyramid_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling: PyTorch's kernel when running eagerly (about twice as fast as
    the gathers on the 1.5x level), :func:`adaptive_avg_pool_2d` while an exporter traces."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return adaptive_avg_pool_2d(x, size)
    return F.adaptive_avg_pool2d(x, size)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PyramidPool(nn.Module):
    """Efficient pyramid pooling: a 1x1 projection to P channels, a depth-wise 3x3 at five scales
    of the map (2, 1.5, 1, 0.5, 0.1; at least 5x5) brought back to its size, then BN-PReLU,
    channel shuffle, a grouped 3x3 (P groups) and a 1x1 to the output channels.

    (N, Cin, H, W) -> (N, Cout, H, W); ``last=True`` is the classifier: a biased 1x1, no BN.
    """

    def __init__(self, cin: int, proj: int, cout: int, last: bool = False):
        super().__init__()
        k = len(PYRAMID_SCALES)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, 1, 1, bias=False, groups=proj)
                                    for _ in PYRAMID_SCALES)
        self.projection_layer = _SeqConvBNAct(cin, proj, 1)
        self.merge_layer = nn.Sequential(
            _SeqBNAct(proj * k), _ChannelShuffle(k), _SeqConvBNAct(proj * k, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=last))
        self.last = last
        if not last:
            self.br = _SeqBNAct(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)  # (N, P, H, W)
        height, width = int(x.shape[2]), int(x.shape[3])
        levels = []
        for scale, stage in zip(PYRAMID_SCALES, self.stages):
            # the release's sizes, float arithmetic included (ceil(30 * 0.1) is 4)
            size = (max(int(math.ceil(height * scale)), MIN_PYRAMID_SIZE),
                    max(int(math.ceil(width * scale)), MIN_PYRAMID_SIZE))
            if scale < 1.0:
                level = _resize(stage(_pyramid_pool(x, size)), (height, width))
            elif scale > 1.0:
                level = _pyramid_pool(stage(_resize(x, size)), (height, width))
            else:
                level = stage(x)
            levels.append(level)  # (N, P, H, W)
        out = self.merge_layer(torch.cat(levels, 1))  # (N, Cout, H, W)
        return out if self.last else self.br(out)


class GatedFusion(nn.Module):
    """Projects an encoder level to decoder channels: grouped 3x3 conv-BN-PReLU (gcd groups),
    scaled per channel by a sigmoid gate of its global average. (N, Cin, H, W) -> (N, Cout, H, W)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                      nn.Sigmoid())
        self.expansion_layer = _SeqConvBNAct(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)  # gate: (N, Cout, 1, 1)


# --- the network ----------------------------------------------------------------------------------

class ESPNetv2Seg(nn.Module):
    """ESPNetv2 segmentation network, width ``width`` (s), ``num_classes`` classes plus, when
    ``background`` (as in the released Cityscapes files), one more output that is dropped.

    ``forward``: (N, 3, H, W) normalised RGB, any H, W -> ``(logits, features)``, logits
    (N, num_classes, ceil(H/2), ceil(W/2)), features (N, 32, ceil(H/2), ceil(W/2)) (the input of
    the classifying pyramid stage).
    """

    norm = IMAGENET_RGB
    output_stride = 2

    def __init__(self, num_classes: int = 19, width: float = DEFAULT_WIDTH, background: bool = True):
        super().__init__()
        width = float(width)
        if width not in WIDTH_CHANNELS:
            raise ValueError(f"ESPNetv2 width {width} is not one of "
                             f"{', '.join(str(s) for s in WIDTH_CHANNELS)}")
        self.width = width
        self.num_classes = num_classes
        self.background = background
        self.raw_classes = num_classes + int(background)
        channels = WIDTH_CHANNELS[width]
        d1, d2, d3 = DECODER_CHANNELS
        self.feature_channels = d3
        proj = min(self.raw_classes // 2, 16)  # pyramid projection channels (10 for 20 outputs)

        self.base_net = ESPNetv2Encoder(channels)
        self.bu_dec_l1 = PyramidPool(channels[3], proj, d1)
        self.bu_dec_l2 = PyramidPool(d1, proj, d2)
        self.bu_dec_l3 = PyramidPool(d2, proj, d3)
        self.bu_dec_l4 = PyramidPool(d3, proj, self.raw_classes, last=True)
        self.merge_enc_dec_l2 = GatedFusion(channels[2], d1)
        self.merge_enc_dec_l3 = GatedFusion(channels[1], d2)
        self.merge_enc_dec_l4 = GatedFusion(channels[0], d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))
        self._init_weights()

    def _init_weights(self) -> None:
        # as the release trains from scratch: He-normal (fan-out) convs, BN at identity
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def build_options(self) -> dict:
        """Keyword arguments that rebuild this architecture with ``build_model``."""
        return {"width": self.width}

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad (N, 3, H, W) at the bottom and right to multiples of 16 (the encoder's
        stride; the decoder's skips need equal sizes). Not padded when already a multiple."""
        for dim in (2, 3):
            size = int(x.shape[dim])
            if size % STRIDE:
                # a gather with constant indices rather than F.pad(mode="reflect"): the same
                # values, any pad length, and no Pad node whose pads the exporter cannot fold
                index = torch.as_tensor(_reflect_indices(size, -size % STRIDE), device=x.device)
                x = x.index_select(dim, index)
        return x

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W), H and W multiples of 16 -> raw logits (N, raw_classes, H/2, W/2) and
        features (N, 32, H/2, W/2)."""
        l1, l2, l3, l4 = self.base_net(x)

        def up(y: torch.Tensor) -> torch.Tensor:  # x2, as the release: bilinear, corners aligned
            return _resize(y, (2 * int(y.shape[2]), 2 * int(y.shape[3])))

        y = self.bu_dec_l1(l4)  # (N, 64, H/16, W/16)
        y = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(l3) + up(y)))  # (N, 48, H/8, W/8)
        y = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(l2) + up(y)))  # (N, 32, H/4, W/4)
        feats = self.bu_br_l4(self.merge_enc_dec_l4(l1) + up(y))  # (N, 32, H/2, W/2)
        return self.bu_dec_l4(feats), feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = int(x.shape[2]), int(x.shape[3])
        raw, feats = self._decode(self._padded(x))
        h, w = -(-height // 2), -(-width // 2)  # the stride-2 cells that cover the frame
        logits = raw[:, :self.num_classes, :h, :w]  # background dropped: (N, K, ceil(H/2), ceil(W/2))
        return logits, feats[:, :, :h, :w]

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The released network's output: all ``raw_classes`` channels (background last),
        upsampled to the input size as the release does. (N, 3, H, W) -> (N, raw_classes, H, W).
        """
        height, width = int(x.shape[2]), int(x.shape[3])
        padded = self._padded(x)
        raw, _ = self._decode(padded)
        raw = _resize(raw, (int(padded.shape[2]), int(padded.shape[3])))
        return raw[:, :, :height, :width]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        # the release's split: the encoder at the base rate, the whole decoder at the multiplied one
        backbone = list(self.base_net.parameters())
        ids = {id(p) for p in backbone}
        return {"backbone": backbone,
                "classifier": [p for p in self.parameters() if id(p) not in ids]}


def _reflect_indices(size: int, pad: int) -> np.ndarray:
    """Indices of an axis of ``size`` extended by ``pad`` reflected samples at its end
    (..., n-2, n-1, n-2, n-3, ...), reflecting again past the start when ``pad >= size``."""
    i = np.arange(size + pad)
    if size == 1:
        return np.zeros_like(i)
    period = 2 * size - 2
    i = i % period
    return np.where(i < size, i, period - i)


# --- reading the architecture from a state dict; deterministic weights for tests -------------------

_WIDTH_KEY = "base_net.level4_0.act.weight"  # (c4,): 128, 256, 320, 384 or 512, one per width
_OUTPUT_KEY = "bu_dec_l4.merge_layer.3.weight"  # (raw_classes, P, 1, 1)


def is_espnetv2_state_dict(state: dict) -> bool:
    return _WIDTH_KEY in state and _OUTPUT_KEY in state


def width_from_state_dict(state: dict) -> float:
    """The width s of a released (or saved) ESPNetv2 state dict, from its level-4 channels."""
    if _WIDTH_KEY not in state:
        raise ValueError(f"not an ESPNetv2 state dict: no {_WIDTH_KEY}")
    channels = int(state[_WIDTH_KEY].shape[0])
    for width, levels in WIDTH_CHANNELS.items():
        if levels[3] == channels:
            return width
    raise ValueError(f"ESPNetv2 state dict with {channels} level-4 channels matches no width "
                     f"({', '.join(str(s) for s in WIDTH_CHANNELS)})")


def raw_classes_from_state_dict(state: dict) -> int:
    """Number of outputs of the final 1x1 classifier (20 for the released Cityscapes files)."""
    return int(state[_OUTPUT_KEY].shape[0])


def deterministic_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every floating-point parameter and buffer of ``model`` from one
    ``numpy.random.RandomState(seed)`` stream, in sorted ``state_dict`` key order; integer
    buffers (``num_batches_tracked``) are left alone. Two models with the same keys, shapes and
    module types (this module's network and EdgeNets' original) get identical weights, so a
    reference output computed once with the original can be stored as a small fixture.

    Per tensor, by the module that owns it: Conv2d weight ~ N(0, 1 / fan_in) (fan_in = in/groups
    * kh * kw), conv bias ~ N(0, 0.1); BatchNorm weight ~ U(0.5, 1.0), bias ~ N(0, 0.1),
    running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5); PReLU weight ~ U(0, 0.5). Values are
    drawn in float64 and cast to float32. These ranges keep the activations of ESPNetv2 of any
    width near unit scale (larger BN gains compound over the ten residual EESP units).
    """
    rng = np.random.RandomState(seed)
    owners = {}
    for prefix, module in model.named_modules():
        for name, _ in list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False)):
            owners[f"{prefix}.{name}" if prefix else name] = (module, name)
    state = model.state_dict()
    new_state = {}
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point():
            new_state[key] = tensor
            continue
        module, name = owners[key]
        shape = tuple(tensor.shape)
        if isinstance(module, nn.Conv2d) and name == "weight":
            fan_in = shape[1] * shape[2] * shape[3]
            values = rng.normal(0.0, math.sqrt(1.0 / fan_in), shape)
        elif isinstance(module, nn.BatchNorm2d) and name == "weight":
            values = rng.uniform(0.5, 1.0, shape)
        elif isinstance(module, nn.BatchNorm2d) and name == "running_var":
            values = rng.uniform(0.5, 1.5, shape)
        elif isinstance(module, nn.PReLU):
            values = rng.uniform(0.0, 0.5, shape)
        elif isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):  # biases, running_mean
            values = rng.normal(0.0, 0.1, shape)
        else:
            raise TypeError(f"deterministic_init has no rule for {key} ({type(module).__name__})")
        new_state[key] = torch.as_tensor(values, dtype=tensor.dtype)
    model.load_state_dict(new_state)
    return model
