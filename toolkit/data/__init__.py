"""Datasets as uint8 NHWC arrays (torch-free) and seeded batch loaders (torch)."""
from .arrays import DATASETS, ArrayDataset, load_dataset, resolve_data_dir

__all__ = ["DATASETS", "ArrayDataset", "load_dataset", "resolve_data_dir"]
