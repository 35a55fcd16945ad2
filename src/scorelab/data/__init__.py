from scorelab.data.base import DataMissingError, DiffusionDataModule
from scorelab.data.images import (CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule,
                                  MNIST5kDataModule, MNISTDataModule)
from scorelab.data.toy import GMMDataModule

__all__ = ["DataMissingError", "DiffusionDataModule", "GMMDataModule", "DigitsDataModule",
           "MNIST5kDataModule", "MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule"]
