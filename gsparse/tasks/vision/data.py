"""Image data: CIFAR-10/100 python batches, ImageFolder trees (ImageNet) and scikit-learn's bundled digits.

* :func:`load_cifar` reads the standard python-pickle batches into uint8 tensors ``[N, 3, 32, 32]``.
  The pickles are read with an unpickler that only builds numpy arrays, lists, dicts and bytes.
* CIFAR augmentation (:func:`cifar_train_transform`: random crop 32 with zero padding 4, horizontal
  flip, normalise; :func:`cifar_eval_transform`: normalise) is written with torch ops on whole
  batches, every random draw from the ``torch.Generator`` passed in: the same generator state gives
  bit-identical batches, which a resumed run needs. (The ops are simple enough that a library adds
  nothing, and torchvision's transforms draw from the global RNG.)
* :class:`ImageFolderDataset` decodes one image per ``__getitem__`` with Pillow (so DataLoader
  workers decode) and augments it as the ImageNet papers do. Its random parameters are drawn by
  this module (torchvision's ``RandomResizedCrop.get_params`` algorithm) from a numpy generator
  seeded by ``(seed, epoch, index)``; the pixel work is done by ``torchvision.transforms.functional``
  when it imports, else by Pillow (the same calls torchvision makes for PIL images: crop, then a
  bilinear resize) and numpy.
* :func:`load_digits_dataset`: the 1,797 real 8x8 digits bundled with scikit-learn, split
  train / val / test, stratified, from a seed.

A missing or malformed dataset raises one :class:`DatasetLayoutError` naming the path and the
layout expected.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class DatasetLayoutError(ValueError):
    """A dataset folder or file is missing or does not have the expected layout."""


# ---- CIFAR ------------------------------------------------------------------------------------

# per-channel mean / std of the training images, on pixel values scaled to [0, 1]
CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_LAYOUT = {  # name -> (folder, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds (numpy arrays and builtin containers)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # pickles written by numpy < 2
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _cifar_layout_text(name: str, root: Path) -> str:
    folder, train, test, label_key, _ = _CIFAR_LAYOUT[name]
    files = ", ".join(train + test)
    return (f"expected {root / folder}/ (or {root} itself) holding the python-pickle batches {files}, "
            f"each a dict with b'data' (uint8 [N, 3072]) and {label_key!r} (N labels), as extracted from "
            f"the '{folder}' python-version archive")


def _cifar_folder(root: Path, name: str) -> Path:
    folder, train, test, _, _ = _CIFAR_LAYOUT[name]
    if (root / folder).is_dir():
        return root / folder
    if root.is_dir() and any((root / file).is_file() for file in train + test):
        return root
    found = "does not exist" if not root.exists() else ("is not a folder" if not root.is_dir() else
                                                          "holds no CIFAR batch")
    raise DatasetLayoutError(f"{name} not found: {root} {found}; {_cifar_layout_text(name, root)}")


def _read_cifar_batch(path: Path, name: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    _, _, _, label_key, classes = _CIFAR_LAYOUT[name]
    if not path.is_file():
        raise DatasetLayoutError(f"{name}: missing file {path}; {layout}")
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # any unpickling failure means the file is not a CIFAR batch
        raise DatasetLayoutError(f"{name}: {path} is not a python-pickle batch ({error}); {layout}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetLayoutError(f"{name}: {path} lacks b'data' or {label_key!r} (found {keys}); {layout}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DatasetLayoutError(f"{name}: {path} holds data {data.dtype} {list(data.shape)} and "
                                 f"{labels.size} labels, expected uint8 [N, 3072] and N labels; {layout}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes):
        raise DatasetLayoutError(f"{name}: {path} has labels outside 0..{classes - 1}; {layout}")
    return data, labels


def load_cifar(root: str | os.PathLike, name: str = "cifar10", split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 or -100 ``split`` ("train" or "test") from the python-pickle batches under ``root``
    (the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or its parent):
    images uint8 ``[N, 3, 32, 32]`` (RGB) and labels int64 ``[N]`` (CIFAR-100: the fine labels)."""
    if name not in _CIFAR_LAYOUT:
        raise ValueError(f"name must be one of {sorted(_CIFAR_LAYOUT)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    folder = _cifar_folder(root, name)
    layout = _cifar_layout_text(name, root)
    _, train, test, _, _ = _CIFAR_LAYOUT[name]
    parts = [_read_cifar_batch(folder / file, name, layout) for file in (train if split == "train" else test)]
    data = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts]).astype(np.int64)
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def normalize_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` per channel."""
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def cifar_normalize(images: torch.Tensor, name: str = "cifar10") -> torch.Tensor:
    """uint8 CIFAR images -> float, normalised with the mean / std of ``name``'s training set."""
    mean, std = CIFAR_MEAN_STD[name]
    return normalize_images(images, mean, std)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Each image of ``[B, C, H, W]``: a random H x W crop of it zero-padded by ``padding`` on every
    side, then a horizontal flip with probability 1/2. Draws (from ``generator``, on the CPU): B row
    offsets, B column offsets, B flip coins, in that order. Same dtype and device as ``images``."""
    count, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = (offsets[0].view(-1, 1) + torch.arange(height)).to(device)  # [B, H]
    cols = (offsets[1].view(-1, 1) + torch.arange(width)).to(device)  # [B, W]
    batch = torch.arange(count, device=device).view(-1, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
    cropped = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    return torch.where(flips.to(device).view(-1, 1, 1, 1), cropped.flip(-1), cropped)


def cifar_train_transform(images: torch.Tensor, generator: torch.Generator, name: str = "cifar10") -> torch.Tensor:
    """Training augmentation of a uint8 batch: random crop 32 with padding 4, horizontal flip, then
    normalise (float32). Deterministic given ``generator``'s state."""
    return cifar_normalize(random_crop_flip(images, generator, padding=4), name)


def cifar_eval_transform(images: torch.Tensor, name: str = "cifar10") -> torch.Tensor:
    """Evaluation transform of a uint8 batch: normalise only."""
    return cifar_normalize(images, name)


# ---- ImageFolder (ImageNet) -------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_folder_layout(root: Path) -> str:
    return (f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image>: one folder per class "
            f"(the same class folders in both), each holding at least one image "
            f"({', '.join(IMAGE_EXTENSIONS)})")


def _torchvision_functional():
    """``torchvision.transforms.functional``, or None where torchvision does not import."""
    try:
        from torchvision.transforms import functional
    except Exception:  # missing, or its compiled ops do not load against this torch
        return None
    return functional


def random_resized_crop_params(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, crop height, crop width)`` as torchvision's ``RandomResizedCrop.get_params``
    chooses them (10 tries of a random area and log-uniform aspect ratio, else a centre crop),
    drawn from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w, crop_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_w, crop_h = int(round(height * max(ratio))), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/split/<class>/<image>`` (ImageNet's train/ and val/ trees): class indices follow the
    sorted class folder names; images are found recursively, in sorted order. ``__getitem__``
    returns ``(float32 [3, size, size], class index)``.

    ``train=True``: random resized crop to ``size`` (scale 0.08-1, ratio 3/4-4/3, bilinear), horizontal
    flip with probability 1/2, ImageNet normalisation; the random draws come from a generator seeded
    by ``(seed, epoch, index)``: call :meth:`set_epoch` before each epoch's DataLoader iterator is
    created (persistent workers keep the epoch they were started with; index with ``(epoch, index)``
    pairs there). ``train=False``: resize the shorter side to ``resize``, centre crop ``size``,
    normalise. ``backend``: "auto" (torchvision's functional transforms if they import, else
    Pillow + numpy), "torchvision" or "pillow"."""

    def __init__(self, root: str | os.PathLike, split: str = "train", train: bool = True, seed: int = 0,
                 size: int = 224, resize: int = 256, backend: str = "auto"):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if backend not in ("auto", "torchvision", "pillow"):
            raise ValueError(f"backend must be 'auto', 'torchvision' or 'pillow', got {backend!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.root, self.split, self.train, self.seed = Path(root).expanduser(), split, train, seed
        self.size, self.resize, self.backend, self.epoch = size, resize, backend, 0
        self.classes, self.samples = self._scan()
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]

    def _scan(self) -> tuple[list[str], list[tuple[str, int]]]:
        folder, layout = self.root / self.split, _image_folder_layout(self.root)
        if not folder.is_dir():
            raise DatasetLayoutError(f"image folder: {folder} is missing (or not a folder); {layout}")
        classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
        if not classes:
            raise DatasetLayoutError(f"image folder: {folder} has no class folders; {layout}")
        samples = []
        for index, name in enumerate(classes):
            found = sorted(os.path.join(directory, file)
                           for directory, _, files in os.walk(folder / name, followlinks=True)
                           for file in files if file.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise DatasetLayoutError(f"image folder: class folder {folder / name} holds no image; {layout}")
            samples.extend((path, index) for path in found)
        return classes, samples

    def set_epoch(self, epoch: int) -> None:
        """Seed the training augmentation of the coming epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item) -> tuple[torch.Tensor, int]:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        path, label = self.samples[index]
        from PIL import Image

        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except Exception as error:
            raise DatasetLayoutError(f"image folder: cannot decode {path} ({error})") from None
        functional = None if self.backend == "pillow" else _torchvision_functional()
        if functional is None and self.backend == "torchvision":
            raise ImportError("backend='torchvision' but torchvision.transforms does not import")
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            top, left, height, width = random_resized_crop_params(image.width, image.height, rng)
            flip = rng.random() < 0.5
            tensor = (self._train_torchvision(functional, image, top, left, height, width, flip) if functional
                      else self._train_pillow(image, top, left, height, width, flip))
        else:
            tensor = self._eval_torchvision(functional, image) if functional else self._eval_pillow(image)
        return tensor, label

    # pixel work: torchvision's functional transforms, or the same steps with Pillow + numpy

    def _train_torchvision(self, functional, image, top, left, height, width, flip) -> torch.Tensor:
        image = functional.resized_crop(image, top, left, height, width, [self.size, self.size],
                                        interpolation=functional.InterpolationMode.BILINEAR)
        if flip:
            image = functional.hflip(image)
        return functional.normalize(functional.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)

    def _eval_torchvision(self, functional, image) -> torch.Tensor:
        image = functional.resize(image, self.resize, interpolation=functional.InterpolationMode.BILINEAR)
        image = functional.center_crop(image, [self.size, self.size])
        return functional.normalize(functional.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)

    def _train_pillow(self, image, top, left, height, width, flip) -> torch.Tensor:
        from PIL import Image

        image = image.crop((left, top, left + width, top + height)).resize((self.size, self.size), Image.BILINEAR)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_normalized_tensor(image)

    def _eval_pillow(self, image) -> torch.Tensor:
        from PIL import Image

        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_size != image.size:
            image = image.resize(new_size, Image.BILINEAR)
        width, height = image.size
        if width < self.size or height < self.size:  # as torchvision's centre crop: pad with zeros
            canvas = Image.new("RGB", (max(width, self.size), max(height, self.size)))
            canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
            image, (width, height) = canvas, canvas.size
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        return _to_normalized_tensor(image.crop((left, top, left + self.size, top + self.size)))


def _to_normalized_tensor(image) -> torch.Tensor:
    """An RGB PIL image -> float32 ``[3, H, W]`` with ImageNet normalisation."""
    array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    return normalize_images(torch.from_numpy(array)[None], IMAGENET_MEAN, IMAGENET_STD)[0]


# ---- digits (bundled with scikit-learn) ---------------------------------------------------------

@dataclass
class DigitsData:
    """The digits split three ways; each split is ``(images float32 [N, 1, 8, 8], labels int64 [N])``,
    images scaled to [0, 1] then normalised with the training split's mean / std."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    indices: dict[str, torch.Tensor] = field(default_factory=dict)  # rows of sklearn's 1,797, sorted
    mean: float = 0.0
    std: float = 1.0
    num_classes: int = 10


def load_digits_dataset(split: str | None = None, seed: int = 0, test_fraction: float = 0.25,
                        val_fraction: float = 0.1) -> Any:
    """scikit-learn's bundled digits (1,797 8x8 images, values 0-16; no download). The split is
    stratified by class and fixed by ``seed``: ``train_test_split(stratify=labels, random_state=seed)``
    takes ``test_fraction`` of all images as test, then again ``val_fraction`` of the rest as
    validation. Returns a :class:`DigitsData`, or with ``split`` ("train", "val" or "test") only
    that split's ``(images, labels)``."""
    if split not in (None, "train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val', 'test' or None, got {split!r}")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rows = np.arange(len(labels))
    rest, test = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=labels[rest], random_state=seed)
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    mean, std = float(images[parts["train"]].mean()), float(images[parts["train"]].std())

    def tensors(part: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        normalised = (images[part] - mean) / std
        return torch.from_numpy(normalised[:, None].copy()), torch.from_numpy(labels[part])

    data = DigitsData(train=tensors(parts["train"]), val=tensors(parts["val"]), test=tensors(parts["test"]),
                      indices={name: torch.from_numpy(part) for name, part in parts.items()}, mean=mean, std=std)
    return data if split is None else getattr(data, split)
