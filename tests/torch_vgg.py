"""A torchvision-identical VGG ``features`` stack built layer for layer in plain PyTorch (torchvision
itself does not install offline here). Index ``N`` of the ``nn.Sequential`` matches ``features.N``."""

from __future__ import annotations

import torch
from torch import nn

CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class TorchVGG(nn.Module):
    def __init__(self, arch: str, pooling: str = "max"):
        super().__init__()
        layers, c_in = [], 3
        for v in CFG[arch]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(8, 2))  # stands in for torchvision's head, ignored by converters


def layer_outputs(model: TorchVGG, x_nchw: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Run ``model.features`` on an already-normalised NCHW input, naming each output like segstyle_jax.vgg."""
    out, block, i = {}, 1, 0
    for layer in model.features:
        x_nchw = layer(x_nchw)
        if isinstance(layer, nn.Conv2d):
            i += 1
            name = f"conv{block}_{i}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu{block}_{i}"
        else:
            name = f"pool{block}"
            block, i = block + 1, 0
        if name in names:
            out[name] = x_nchw
    return out
