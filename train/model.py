"""DFER video backbones in plain torch (torchvision does not import beside the CPU torch here).

- `resnet18_transformer`: a 2D ResNet-18 encodes every frame, a transformer encoder attends
  over the T frame features (+ a class token), a linear head gives C logits: the
  Former-DFER / M3DFEL family.
- `r2plus1d`: a small R(2+1)D: every 3D convolution factorised into a (1, 3, 3) spatial
  and a (3, 1, 1) temporal convolution.

Input: float N x 3 x T x H x W (what pipeline.stream yields); output: N x C logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ModelConfig", "create_model", "use_channels_last", "ResNet18Transformer", "R2Plus1D"]


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18_transformer"  # resnet18_transformer | r2plus1d
    num_classes: int = 7
    num_frames: int = 16  # T (positional embeddings of the temporal transformer)
    width: int = 64  # channels of the first stage; 64 is ResNet-18, stages are width x (1, 2, 4, 8)
    temporal_layers: int = 2
    heads: int = 8
    dropout: float = 0.1


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)) + skip)


class ResNet18(nn.Module):
    """ResNet-18 (torchvision's layout, so its ImageNet state dict loads with --pretrained)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
            cin = c
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, out_dim)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


class ResNet18Transformer(nn.Module):
    memory_format = torch.contiguous_format  # of the frames fed to the 2D encoder; see use_channels_last

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = ResNet18(cfg.width)
        d = self.encoder.out_dim
        heads = max(1, min(cfg.heads, d // 8))
        while d % heads:
            heads -= 1
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_frames + 1, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w).contiguous(memory_format=self.memory_format)
        f = self.encoder(frames).view(n, t, -1)  # per-frame features
        f = torch.cat([self.cls.expand(n, -1, -1), f], dim=1) + self.pos[:, : t + 1]
        f = self.temporal(f)
        return self.head(self.norm(f[:, 0]))  # the class token sums up the clip


class Conv2Plus1D(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        mid = max(8, (cin * cout * 27) // (cin * 9 + 3 * cout))  # parameters of the 3D conv it replaces
        super().__init__(
            nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
            nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        )


class R2Plus1D(nn.Module):
    memory_format = torch.contiguous_format

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv3d(3, w, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                                  nn.BatchNorm3d(w), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(Conv2Plus1D(w, w, 1), Conv2Plus1D(w, 2 * w, 2), Conv2Plus1D(2 * w, 4 * w, 2),
                                    Conv2Plus1D(4 * w, 8 * w, 2))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(8 * w, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3, 4)))


def create_model(cfg: ModelConfig) -> nn.Module:
    archs = {"resnet18_transformer": ResNet18Transformer, "r2plus1d": R2Plus1D}
    if cfg.arch not in archs:
        raise ValueError(f"unknown model {cfg.arch!r}; known: {', '.join(archs)}")
    return archs[cfg.arch](cfg)


def use_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last weights and inputs (NHWC for the 2D frame encoder, NDHWC for R(2+1)D): the layout
    cuDNN's tensor-core convolutions want; same outputs, in place."""
    fmt = torch.channels_last_3d if isinstance(model, R2Plus1D) else torch.channels_last
    for p in model.parameters():
        if p.dim() == (5 if fmt is torch.channels_last_3d else 4):
            p.data = p.data.contiguous(memory_format=fmt)
    model.memory_format = fmt
    return model
