"""Image data readers: CIFAR pickles, ImageFolder trees, bundled digits, CIFAR augmentation."""
import pickle

import numpy as np
import pytest
import torch

from gsparse.tasks.vision.data import (CIFAR_MEAN_STD, DatasetLayoutError, ImageFolderDataset, cifar_eval_transform,
                                       cifar_train_transform, load_cifar, load_digits_dataset, random_crop_flip)


def _write_batch(path, count, label_key, classes, seed, protocol=2):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, size=count).tolist()
    with open(path, "wb") as handle:
        pickle.dump({b"batch_label": b"batch", b"data": data, label_key: labels, b"filenames": [b"x.png"] * count},
                    handle, protocol=protocol)
    return data, labels


def _cifar10_tree(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [_write_batch(folder / f"data_batch_{i}", 3, b"labels", 10, seed=i) for i in range(1, 6)]
    test = _write_batch(folder / "test_batch", 4, b"labels", 10, seed=9)
    return folder, batches, test


def test_cifar10_reads_batches_from_folder_or_parent(tmp_path):
    folder, batches, test = _cifar10_tree(tmp_path)
    for root in (tmp_path, folder):
        images, labels = load_cifar(root, "cifar10", "train")
        assert images.dtype == torch.uint8 and images.shape == (15, 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.tolist() == sum((b[1] for b in batches), [])
        first = batches[0][0][0]  # row: 1024 red, 1024 green, 1024 blue, each row-major 32x32
        assert torch.equal(images[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))
    images, labels = load_cifar(tmp_path, "cifar10", "test")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == test[1]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _, train_labels = _write_batch(folder / "train", 5, b"fine_labels", 100, seed=1, protocol=4)
    _write_batch(folder / "test", 2, b"fine_labels", 100, seed=2)
    for root in (tmp_path, folder):
        images, labels = load_cifar(root, "cifar100", "train")
        assert images.shape == (5, 3, 32, 32) and labels.tolist() == train_labels
    assert load_cifar(tmp_path, "cifar100", "test")[0].shape == (2, 3, 32, 32)


def test_cifar_errors_name_the_path_and_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match=str(tmp_path / "nowhere")) as error:
        load_cifar(tmp_path / "nowhere", "cifar10")
    assert isinstance(error.value, ValueError) and "data_batch_5" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="cifar-100-python"):
        load_cifar(tmp_path / "empty", "cifar100")
    folder, _, _ = _cifar10_tree(tmp_path / "partial")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetLayoutError, match="missing file .*data_batch_3"):
        load_cifar(tmp_path / "partial", "cifar10")
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetLayoutError, match="test_batch is not a python-pickle batch"):
        load_cifar(folder, "cifar10", "test")
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(DatasetLayoutError, match=r"expected uint8 \[N, 3072\]"):
        load_cifar(folder, "cifar10", "test")
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}, handle)
    with pytest.raises(DatasetLayoutError, match="lacks"):
        load_cifar(folder, "cifar10", "test")


def test_cifar_refuses_pickles_that_build_other_objects(tmp_path):
    folder, _, _ = _cifar10_tree(tmp_path)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": __import__("collections").OrderedDict(), b"labels": []}, handle)
    with pytest.raises(DatasetLayoutError, match="refusing to load collections.OrderedDict"):
        load_cifar(tmp_path, "cifar10", "test")


def test_cifar_augmentation_is_reproducible_and_crops_padded_images():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    first = cifar_train_transform(images, torch.Generator().manual_seed(3))
    again = cifar_train_transform(images, torch.Generator().manual_seed(3))
    other = cifar_train_transform(images, torch.Generator().manual_seed(4))
    assert first.dtype == torch.float32 and first.shape == images.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(cifar_eval_transform(images), cifar_eval_transform(images.clone()))
    # every output is a 32x32 window of the zero-padded image, possibly mirrored
    cropped = random_crop_flip(images, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for index in range(8):
        windows = [padded[index, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(cropped[index], w) or torch.equal(cropped[index], w.flip(-1)) for w in windows)
    grey = cifar_eval_transform(torch.full((1, 3, 2, 2), 51, dtype=torch.uint8), "cifar100")
    expected = (0.2 - torch.tensor(CIFAR_MEAN_STD["cifar100"][0])) / torch.tensor(CIFAR_MEAN_STD["cifar100"][1])
    assert torch.allclose(grey[0, :, 1, 1], expected)


def _image_tree(root, classes=("dog", "cat", "bird"), per_class=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for index, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for number in range(per_class):
                size = (40 + 7 * number, 30 + 5 * index)  # small and non-square
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{number}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_image_folder_classes_shapes_and_eval_determinism(tmp_path):
    _image_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, "val", train=False)
    assert dataset.classes == ["bird", "cat", "dog"] and dataset.class_to_idx["dog"] == 2
    assert len(dataset) == 6 and dataset.targets == [0, 0, 1, 1, 2, 2]
    image, label = dataset[5]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 2
    dataset.set_epoch(7)
    assert torch.equal(image, dataset[5][0])
    assert len(ImageFolderDataset(tmp_path, "train", train=True)) == 6  # notes.txt is skipped


def test_image_folder_training_randomness_follows_seed_and_epoch(tmp_path):
    _image_tree(tmp_path)
    dataset = ImageFolderDataset(tmp_path, "train", train=True, seed=1)
    dataset.set_epoch(0)
    epoch0 = [dataset[i][0] for i in range(len(dataset))]
    dataset.set_epoch(1)
    epoch1 = [dataset[i][0] for i in range(len(dataset))]
    assert all(image.shape == (3, 224, 224) for image in epoch0)
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1))
    again = ImageFolderDataset(tmp_path, "train", train=True, seed=1)
    again.set_epoch(0)
    assert all(torch.equal(again[i][0], epoch0[i]) for i in range(len(dataset)))
    assert torch.equal(again[(1, 3)][0], epoch1[3])  # (epoch, index) items, for persistent workers
    other_seed = ImageFolderDataset(tmp_path, "train", train=True, seed=2)
    assert not all(torch.equal(other_seed[i][0], epoch0[i]) for i in range(len(dataset)))
    loader = torch.utils.data.DataLoader(again, batch_size=3, num_workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 224, 224) and labels.dtype == torch.int64


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'train'} is missing") as error:
        ImageFolderDataset(tmp_path, "train")
    assert "one folder per class" in str(error.value)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'val'} is missing"):
        ImageFolderDataset(tmp_path, "val", train=False)
    with pytest.raises(DatasetLayoutError, match="has no class folders"):
        ImageFolderDataset(tmp_path, "train")
    _image_tree(tmp_path / "tree")
    (tmp_path / "tree" / "val" / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'tree' / 'val' / 'empty'} holds no image"):
        ImageFolderDataset(tmp_path / "tree", "val", train=False)


def test_digits_splits_are_stratified_disjoint_and_normalised():
    data = load_digits_dataset(seed=0)
    sizes = {name: len(getattr(data, name)[1]) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 450 and sizes["val"] == 135
    rows = [set(data.indices[name].tolist()) for name in ("train", "val", "test")]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    for name in ("train", "val", "test"):
        images, labels = getattr(data, name)
        assert images.shape == (len(labels), 1, 8, 8) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        share = torch.bincount(labels, minlength=10).float() / len(labels)
        assert (share - 0.1).abs().max() < 0.02  # each class ~10% of every split
        low, high = (0 - data.mean) / data.std, (1 - data.mean) / data.std
        assert images.min() >= low - 1e-5 and images.max() <= high + 1e-5
    train_images = data.train[0]
    assert abs(float(train_images.mean())) < 1e-4 and abs(float(train_images.std()) - 1) < 1e-2
    again = load_digits_dataset("test", seed=0)
    assert torch.equal(again[0], data.test[0]) and torch.equal(again[1], data.test[1])
    assert not torch.equal(load_digits_dataset(seed=1).indices["test"], data.indices["test"])
