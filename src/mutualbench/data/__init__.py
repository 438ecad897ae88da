"""Data: data sets as uint8 arrays with provenance, and the on-device batch loader."""

from .loader import DeviceLoader, balanced_subset_indices, seeded_generator
from .sources import DataError, ImageDataset, default_data_root, load_dataset

__all__ = [
    "DataError",
    "DeviceLoader",
    "ImageDataset",
    "balanced_subset_indices",
    "default_data_root",
    "load_dataset",
    "seeded_generator",
]
