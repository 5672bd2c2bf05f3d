"""Image classifiers of the sparse-training literature, defined here (torchvision is not needed).

* ``resnet50``: ImageNet ResNet-50 v1.5 as torchvision builds it (stride on the bottleneck's 3x3
  conv, same module names, so torchvision state dicts load), 25,557,032 parameters for 1000 classes.
* ``cifar_resnet50``: the CIFAR ResNet-50 of the DST literature (3x3 stem at stride 1, no max-pool,
  bottleneck stages [3, 4, 6, 3]), 23,520,842 parameters for 10 classes.
* ``cifar_vgg19``: GraSP's VGG-19 with batch norm for CIFAR (bias-free 3x3 convs, average pool,
  one ``Linear(512, num_classes)``), 20,035,018 parameters for 10 classes.
* ``small_resnet``: three stages of one basic block, for the bundled 8x8 digits and tests.

Every conv and linear weight is a candidate for sparsity under gsparse's default recipe
(``params.module_types``); BN parameters and biases stay dense. The stem conv is the first such
weight and the classifier the last, so ``dense_first_layer`` / ``dense_last_layer`` keep them dense.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MODEL_NAMES = ("resnet50", "cifar_resnet50", "cifar_vgg19", "small_resnet")

VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that keeps its running statistics in float32 and normalises in float32
    when the model runs in bf16/fp16 (DeepSpeed casts the whole module): the statistics stay
    consistent with an fp32 run, and CPU kernels get matching dtypes. Identical in fp32."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("running_mean", "running_var"):
            buffer = self._buffers.get(name)
            if buffer is not None and buffer.dtype in (torch.bfloat16, torch.float16):
                self._buffers[name] = buffer.float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_statistics = self.training or self.running_mean is None
        tracked = not self.training or self.track_running_stats
        output = nn.functional.batch_norm(
            x.float(), self.running_mean if tracked else None, self.running_var if tracked else None,
            None if self.weight is None else self.weight.float(), None if self.bias is None else self.bias.float(),
            use_batch_statistics, momentum, self.eps)
        return output.to(x.dtype)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """torchvision's ``downsample``: 1x1 conv + BN where the shape changes, else identity (None)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34 block)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, width, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride: ResNet v1.5) -> 1x1 with 4x expansion, and a residual."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_channels)
        self.bn3 = BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet with torchvision's module names (``conv1``, ``bn1``, ``layer1``..., ``fc``).

    ``stem="imagenet"``: 7x7 conv at stride 2 and a 3x3 max-pool at stride 2; ``stem="cifar"``:
    3x3 conv at stride 1, no max-pool. Stage ``i`` has ``blocks[i]`` blocks of width
    ``widths[i]``; every stage after the first halves the resolution. Init as torchvision:
    Kaiming normal (fan_out, ReLU) for convs, BN gamma 1 and beta 0 (gamma 0 for the last BN of
    each block with ``zero_init_residual``), PyTorch's default for the classifier.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, ...],
                 widths: tuple[int, ...], num_classes: int, in_channels: int = 3, stem: str = "imagenet",
                 zero_init_residual: bool = False):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        stem_width = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(in_channels, stem_width)
            self.maxpool = nn.Identity()
        self.bn1 = BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        channels = stem_width
        for index, (count, width) in enumerate(zip(blocks, widths)):
            stage = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                stage.append(block(channels, width, stride))
                channels = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarVGG(nn.Module):
    """GraSP's CIFAR VGG with batch norm: ``feature`` (3x3 conv without bias, BN, ReLU; "M" is a
    2x2 max-pool), an average pool to 1x1 (GraSP's ``AvgPool2d(2)`` on the 2x2 map of a 32x32
    input) and one ``classifier = Linear(last width, num_classes)``. Init: Kaiming normal
    (fan_out, ReLU) for convs, N(0, 0.01) and zero bias for the classifier, BN gamma 1, beta 0."""

    def __init__(self, config: tuple = VGG19_CONFIG, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for entry in config:
            if entry == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [_conv3x3(channels, entry), BatchNorm2d(entry), nn.ReLU(inplace=True)]
                channels = entry
        self.feature = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.feature(x)), 1))


def resnet50(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ImageNet ResNet-50 v1.5 (torchvision's ``resnet50``): 25,557,032 parameters for 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels, "imagenet",
                  zero_init_residual)


def cifar_resnet50(num_classes: int = 10, in_channels: int = 3, zero_init_residual: bool = False) -> ResNet:
    """CIFAR ResNet-50 (3x3 stem at stride 1, no max-pool): 23,520,842 parameters for 10 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels, "cifar",
                  zero_init_residual)


def cifar_vgg19(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """GraSP's VGG-19 with batch norm for CIFAR: 20,035,018 parameters for 10 classes."""
    return CifarVGG(VGG19_CONFIG, num_classes, in_channels)


def small_resnet(num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 zero_init_residual: bool = False) -> ResNet:
    """Three stages of one basic block (widths ``width``, 2x, 4x; 3x3 stem at stride 1): 77,754
    parameters for 1 input channel, width 16 and 10 classes; made for 8x8 digits and tests."""
    return ResNet(BasicBlock, (1, 1, 1), (width, 2 * width, 4 * width), num_classes, in_channels, "cifar",
                  zero_init_residual)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet50, "cifar_resnet50": cifar_resnet50, "cifar_vgg19": cifar_vgg19, "small_resnet": small_resnet,
}


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The model called ``name`` (one of :data:`MODEL_NAMES`) with its default options."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed names: {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels)
