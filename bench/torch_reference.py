"""The mathematics of segstyle_jax in plain PyTorch: the reference for parity tests and benchmarks.

Written the way a PyTorch user would write it (an ``nn.Sequential`` VGG, NCHW tensors, a loss
closure, ``torch.optim.Adam`` / ``torch.optim.LBFGS``), and independent of the JAX code: it imports
nothing from ``segstyle_jax``. It reads the project's weight files (``.npz``, HWIO kernels) itself,
or takes a loaded ``segstyle_jax.weights.VGGWeights`` (anything with ``.params`` and ``.metadata``).

What it computes (DESIGN.md section 2; every formula as in ``segstyle_jax.losses`` / ``masks``):

* VGG16/VGG19 ``features`` in torchvision's layer order, input ``(x - mean) / std`` with ``mean`` and
  ``std`` from the weight file's ``preprocessing`` metadata, only up to the deepest tap.
* Layer masks: the segment masks ``[K, h, w]`` 2x2-average-pooled (``F.avg_pool2d``, floor on odd
  sizes) once per pooling step before the tap (``reluB_C`` -> ``B - 1`` pools).
* Locality (``locality`` / ``localized``): masks ``M_k (1 - gamma exp(-d_k / rho))`` before pooling,
  ``d_k`` the exact Euclidean distance to the nearest pixel outside segment ``k`` (``M_k >= 0.5``;
  a segment covering the whole image gets ``h + w``), from ``scipy.ndimage.distance_transform_edt``.
* Masked Gram ``G_k = sum_p m_k(p) F_p F_p^T / max(sum_p m_k(p), 1e-8)``; style error
  ``||G - A||_F^2 / c^2``; a layer whose mask area is ``< 1e-3`` contributes exactly 0.
* Targets ``A_k``: the (region-)masked Gram of segment ``k``'s style image, or the weighted mean of
  several (weights normalized to sum 1), computed once.
* Content: mean over the content taps of ``mean((F - P)^2)``. TV: mean squared vertical neighbour
  difference + mean squared horizontal one.
* One image (``blended``, ``locality``, ``localized``):
  ``L = a L_content + b sum_k w_k sum_l lambda_l E_k^l + t TV``.
  ``multipass``: a batch of ``K`` images, image ``k`` with the unmasked Gram against segment ``k``'s
  target, ``L = sum_k (a L_content(x_k) + b w_k sum_l lambda_l E^l(x_k) + t TV(x_k))``.
* One step: Adam (``torch.optim.Adam``, same learning rate and defaults as ``optax.adam``) or
  L-BFGS (``torch.optim.LBFGS``, one iteration with a strong-Wolfe line search per step; *not*
  numerically the same algorithm as ``optax.lbfgs``), or ``lbfgs-fixed``: torch's default LBFGS
  (unit step, no line search, one evaluation per step, as in neural-style; its first step is
  scaled differently from optax's), then a clamp to ``[0, 1]``.

Images at the API are NHWC numpy float32 in [0, 1] like the JAX side (``[h, w, 3]``, or
``[K, h, w, 3]`` for multipass); inside, tensors are NCHW.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

APPROACHES = ("multipass", "blended", "locality", "localized")
DEFAULT_STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_TAPS = ("relu4_2",)
EPS = 1e-8
MIN_AREA = 1e-3

_CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)


# ----------------------------------------------------------------------------------------------
# weights


def hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """The one layout change: Flax HWIO ``[kh, kw, c_in, c_out]`` -> PyTorch OIHW ``[c_out, c_in, kh, kw]``."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(kernel, np.float32), (3, 2, 0, 1))))


def read_weights(weights) -> tuple[dict, dict]:
    """``(params, metadata)`` from a project ``.npz`` weight file or a ``VGGWeights``-like object.

    ``params`` is ``{"conv1_1": {"kernel": HWIO array, "bias": array}, ...}``.
    """
    if hasattr(weights, "params") and hasattr(weights, "metadata"):
        return weights.params, dict(weights.metadata)
    with np.load(Path(weights), allow_pickle=False) as archive:
        data = {k: archive[k] for k in archive.files}
    metadata = json.loads(data.pop("__metadata__").tobytes().decode())
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in data.items():
        layer, _, leaf = key.partition("/")
        params.setdefault(layer, {})[leaf] = value
    return params, metadata


def layer_names(arch: str) -> list[str]:
    names = []
    for block, n in enumerate(_CONVS_PER_BLOCK[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def tap_level(tap: str) -> int:
    """Pools before a ``reluB_C`` / ``convB_C`` tap: ``B - 1`` (``relu4_2`` -> 3)."""
    match = re.fullmatch(r"(?:relu|conv)([1-5])_\d", tap)
    if match is None:
        raise ValueError(f"{tap!r} is not a conv/relu tap name")
    return int(match.group(1)) - 1


class VGGFeatures(nn.Module):
    """torchvision's VGG ``features`` as an ``nn.Sequential``; ``forward`` returns ``{tap: [N, c, h, w]}``.

    Only the layers up to the deepest requested tap are built. Input: NCHW RGB in [0, 1].
    ``dtype``: what the layers compute in (``torch.bfloat16``: the preprocessed input and the layers'
    weights rounded to it); the returned features are float32 either way.
    """

    def __init__(self, params: Mapping, metadata: Mapping, taps: Sequence[str], pooling: str = "max",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        arch = metadata["arch"]
        names = layer_names(arch)
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise ValueError(f"unknown taps {unknown} for {arch}")
        self.names = names[: max(names.index(t) for t in taps) + 1]
        self.taps = tuple(taps)
        layers = []
        for name in self.names:
            if name.startswith("conv"):
                kernel, bias = params[name]["kernel"], params[name]["bias"]
                conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0], padding=kernel.shape[0] // 2)
                with torch.no_grad():
                    conv.weight.copy_(hwio_to_oihw(kernel))
                    conv.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
                layers.append(conv)
            elif name.startswith("relu"):
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
        self.layers = nn.Sequential(*layers)
        pre = metadata["preprocessing"]
        self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.dtype = dtype
        self.layers.to(dtype)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((x - self.mean) / self.std).to(self.dtype)
        out = {}
        for name, layer in zip(self.names, self.layers):
            x = layer(x)
            if name in self.taps:
                out[name] = x.float()
        return out


# ----------------------------------------------------------------------------------------------
# masks and losses (plain functions on NCHW tensors)


def pooled_masks(masks: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
    """``[K, h, w]`` -> ``{tap: [K, h_l, w_l]}`` by 2x2 average pooling once per VGG pool."""
    out = {}
    for tap in taps:
        m = masks[:, None]
        for _ in range(tap_level(tap)):
            m = F.avg_pool2d(m, 2, 2)
        out[tap] = m[:, 0]
    return out


def distance_to_outside(masks: np.ndarray) -> np.ndarray:
    """``[K, h, w]``: Euclidean distance to the nearest pixel outside segment ``k`` (0 outside)."""
    from scipy.ndimage import distance_transform_edt

    inside = np.asarray(masks) >= 0.5
    k, h, w = inside.shape
    out = np.zeros((k, h, w), np.float32)
    for i in range(k):
        if inside[i].all():
            out[i] = h + w
        elif inside[i].any():
            out[i] = distance_transform_edt(inside[i])
    return out


def masked_grams(f: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f`` ``[c, h, w]``, ``m`` ``[K, h, w]`` -> ``(G [K, c, c], area [K])``, area-normalized."""
    c = f.shape[0]
    f = f.reshape(c, -1)
    m = m.reshape(m.shape[0], -1)
    area = m.sum(1)
    g = (f.unsqueeze(0) * m.unsqueeze(1)) @ f.t()
    return g / area.clamp_min(EPS).view(-1, 1, 1), area


def grams(f: torch.Tensor) -> torch.Tensor:
    """``f`` ``[N, c, h, w]`` -> plain Grams ``[N, c, c]`` divided by ``h w``."""
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


def style_error(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``||G - A||_F^2 / c^2`` over the last two axes."""
    return ((g - a) ** 2).sum((-2, -1)) / (g.shape[-1] ** 2)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[N, 3, h, w]`` -> ``[N]``: mean squared vertical + horizontal neighbour differences."""
    dv = x[:, :, 1:, :] - x[:, :, :-1, :]
    dh = x[:, :, :, 1:] - x[:, :, :, :-1]
    return (dv ** 2).mean((1, 2, 3)) + (dh ** 2).mean((1, 2, 3))


def _nchw(x) -> torch.Tensor:
    x = torch.from_numpy(np.array(x, np.float32))  # a copy: torch wants writable memory
    return (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2).contiguous()


def _nhwc(x: torch.Tensor, batched: bool) -> np.ndarray:
    x = x.detach().cpu().permute(0, 2, 3, 1).numpy()
    return x if batched else x[0]


# ----------------------------------------------------------------------------------------------
# the whole problem


class TorchStyleTransfer:
    """One style-transfer problem in PyTorch: targets built once, ``step()`` runs one optimizer step.

    Args:
      weights: a project ``.npz`` path or a ``VGGWeights``-like object (``.params``, ``.metadata``).
      approach: ``multipass``, ``blended``, ``locality`` or ``localized``.
      content: ``[h, w, 3]`` float RGB in [0, 1].
      masks: ``[K, h, w]`` segment masks summing to 1 per pixel.
      style_images: list of ``[hs, ws, 3]`` images.
      segment_styles: per segment, a sequence of ``(style index, weight, region mask [hs, ws] or None)``
        (or an object with such a ``.parts``, e.g. ``segstyle_jax.engine.SegmentStyle``).
      content_weight, style_weight, tv_weight, segment_weights, layer_weights, gamma, rho: the loss
        weights (defaults of ``LossWeights.create``).
      optimizer: ``adam``, ``lbfgs`` or ``lbfgs-fixed``; learning_rate, lbfgs_memory, clip as in ``StepConfig``.
      init: initial image (NHWC); default the content (``K`` copies for multipass).
      compile: wrap the loss in ``torch.compile``.
      device: torch device.
      compute_dtype: ``"float32"`` or ``"bfloat16"``: what the VGG layers of the loss compute in (the
        features come back as float32; the targets are computed in float32).
    """

    def __init__(self, weights, approach: str, content, masks, style_images, segment_styles, *,
                 style_taps: Sequence[str] = DEFAULT_STYLE_TAPS,
                 content_taps: Sequence[str] = DEFAULT_CONTENT_TAPS, pooling: str = "max",
                 content_weight: float = 1.0, style_weight: float = 1e3, tv_weight: float = 10.0,
                 segment_weights: Sequence[float] | None = None, layer_weights: Sequence[float] | None = None,
                 gamma: float = 0.8, rho: float = 8.0, optimizer: str = "adam", learning_rate: float = 0.02,
                 lbfgs_memory: int = 10, clip: bool = True, init=None, compile: bool = False,
                 device: str | torch.device = "cpu", compute_dtype: str = "float32"):
        if approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, got {approach!r}")
        self.approach, self.device, self.clip = approach, torch.device(device), clip
        self.style_taps, self.content_taps = tuple(style_taps), tuple(content_taps)
        taps = self.style_taps + tuple(t for t in self.content_taps if t not in self.style_taps)
        params, metadata = read_weights(weights)
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        if compute_dtype not in dtypes:
            raise ValueError(f"compute_dtype must be float32 or bfloat16, got {compute_dtype!r}")
        self.vgg = VGGFeatures(params, metadata, taps, pooling).to(self.device).eval()
        masks = np.asarray(masks, np.float32)
        self.K = masks.shape[0]
        self.segment_weights = torch.tensor(np.ones(self.K) if segment_weights is None else segment_weights,
                                            dtype=torch.float32, device=self.device)
        lw = np.ones(len(self.style_taps)) if layer_weights is None else np.asarray(layer_weights)
        self.layer_weights = {t: float(lw[i]) for i, t in enumerate(self.style_taps)}
        self.a, self.b, self.t = float(content_weight), float(style_weight), float(tv_weight)

        with torch.no_grad():
            # style targets {tap: [K, c, c]}
            style_vgg = VGGFeatures(params, metadata, self.style_taps, pooling).to(self.device).eval()
            per_segment, style_feats = [], {}
            for seg in segment_styles:
                parts = seg.parts if hasattr(seg, "parts") else seg
                total = sum(w for _, w, _ in parts)
                acc = {t: 0.0 for t in self.style_taps}
                for index, weight, region in parts:
                    if index not in style_feats:
                        style_feats[index] = style_vgg(_nchw(style_images[index]).to(self.device))
                    feats = style_feats[index]
                    region = np.ones(np.shape(style_images[index])[:2], np.float32) if region is None \
                        else np.asarray(region, np.float32)
                    region_layers = pooled_masks(torch.as_tensor(region, device=self.device)[None], self.style_taps)
                    for tap in self.style_taps:
                        acc[tap] = acc[tap] + masked_grams(feats[tap][0], region_layers[tap])[0][0] * (weight / total)
                per_segment.append(acc)
            self.targets = {t: torch.stack([s[t] for s in per_segment]) for t in self.style_taps}
            del style_vgg, style_feats
            content_feats = self.vgg(_nchw(content).to(self.device))
            self.content_targets = {t: content_feats[t] for t in self.content_taps}
            # layer masks {tap: [K, h_l, w_l]} (locality-weighted first where the approach asks)
            m = torch.as_tensor(masks, device=self.device)
            if approach in ("locality", "localized"):
                d = torch.as_tensor(distance_to_outside(masks), device=self.device)
                g, r = min(max(float(gamma), 0.0), 1.0), max(float(rho), 1e-3)
                m = m * (1 - g * torch.exp(-d / r))
            self.layer_masks = pooled_masks(m, self.style_taps)
        if compute_dtype != "float32":  # the targets above in float32, the loss's VGG in compute_dtype
            self.vgg = VGGFeatures(params, metadata, taps, pooling, dtypes[compute_dtype]).to(self.device).eval()

        self.batched = approach == "multipass"
        if init is None:
            init = np.broadcast_to(content, (self.K,) + np.shape(content)) if self.batched else content
        self.x = _nchw(init).to(self.device).requires_grad_(True)
        self._loss = torch.compile(self.loss) if compile else self.loss
        if optimizer == "adam":
            self.opt = torch.optim.Adam([self.x], lr=learning_rate)
        elif optimizer == "lbfgs":
            self.opt = torch.optim.LBFGS([self.x], lr=1.0, max_iter=1, history_size=lbfgs_memory,
                                         line_search_fn="strong_wolfe")
        elif optimizer == "lbfgs-fixed":  # torch's default: lr 1, no line search
            self.opt = torch.optim.LBFGS([self.x], lr=1.0, max_iter=1, history_size=lbfgs_memory)
        else:
            raise ValueError(f"optimizer must be adam, lbfgs or lbfgs-fixed, got {optimizer!r}")
        self.optimizer = optimizer

    # -- the loss -------------------------------------------------------------------------------

    def _content(self, feats) -> torch.Tensor:
        """``[N]``: mean over content taps of the per-image mean squared feature difference."""
        return sum(((feats[t] - self.content_targets[t]) ** 2).mean((1, 2, 3)) for t in self.content_taps) \
            / len(self.content_taps)

    def style_term(self, feats) -> torch.Tensor:
        """``sum_k w_k sum_l lambda_l E_k^l`` from the features ``{tap: [N, c, h, w]}``.

        Multipass: ``[K]``, image ``k``'s unmasked-Gram error against segment ``k``'s target, times
        ``w_k``. One image: a scalar, masked Grams, layers with mask area < 1e-3 counting 0.
        """
        if self.batched:
            style = 0.0
            for tap in self.style_taps:
                style = style + self.layer_weights[tap] * style_error(grams(feats[tap]), self.targets[tap])
            return self.segment_weights * style
        per_segment = 0.0
        for tap in sorted(self.style_taps):
            g, area = masked_grams(feats[tap][0], self.layer_masks[tap])
            e = self.layer_weights[tap] * style_error(g, self.targets[tap])
            per_segment = per_segment + torch.where(area >= MIN_AREA, e, torch.zeros_like(e))
        return (self.segment_weights * per_segment).sum()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Total loss of ``x`` (NCHW; ``[1, 3, h, w]``, or ``[K, 3, h, w]`` for multipass)."""
        feats = self.vgg(x)
        per_image = self.a * self._content(feats) + self.b * self.style_term(feats) + self.t * total_variation(x)
        return per_image.sum()

    def loss_and_grad(self, image) -> tuple[float, np.ndarray]:
        """Loss and its gradient w.r.t. an NHWC numpy ``image`` (``[h, w, 3]`` or ``[K, h, w, 3]``)."""
        x = _nchw(image).to(self.device).requires_grad_(True)
        value = self._loss(x)
        (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), _nhwc(grad, np.ndim(image) == 4)

    # -- optimization ---------------------------------------------------------------------------

    def _closure(self):
        self.opt.zero_grad(set_to_none=True)
        value = self._loss(self.x)
        value.backward()
        return value

    def step(self) -> float:
        """One optimizer step (then the clamp to [0, 1]); returns the loss before the step."""
        value = self.opt.step(self._closure)
        if self.clip:
            with torch.no_grad():
                self.x.clamp_(0.0, 1.0)
        return float(value.detach())

    @property
    def image(self) -> np.ndarray:
        """The current image(s), NHWC numpy."""
        return _nhwc(self.x, self.batched)


def from_step_config(weights, config, loss_weights, content, masks, style_images, segment_styles,
                     **kwargs) -> TorchStyleTransfer:
    """Build the reference from the JAX side's ``StepConfig`` and ``LossWeights`` (read by attribute)."""
    lw = loss_weights
    return TorchStyleTransfer(
        weights, config.approach, content, masks, style_images, segment_styles,
        style_taps=config.style_taps, content_taps=config.content_taps, pooling=config.pooling,
        content_weight=float(lw.content), style_weight=float(lw.style), tv_weight=float(lw.tv),
        segment_weights=np.asarray(lw.segments), layer_weights=np.asarray(lw.layers),
        gamma=float(lw.gamma), rho=float(lw.rho), optimizer=config.optimizer,
        learning_rate=config.learning_rate, lbfgs_memory=config.lbfgs_memory, clip=config.clip,
        compute_dtype=getattr(config, "compute_dtype", "float32"), **kwargs)


__all__ = ["TorchStyleTransfer", "VGGFeatures", "from_step_config", "hwio_to_oihw", "read_weights",
           "pooled_masks", "distance_to_outside", "masked_grams", "grams", "style_error", "total_variation"]
