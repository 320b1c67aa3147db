"""Datasets: ingest (local, URL, Dask), shards, the dataset reader, and the training objectives
that turn files into examples.

`ingest` is not re-exported: `obf.data.ingest` stays the module (`from obf.data.ingest import ingest`).
"""

from obf.data.dataset import DataError, Dataset, Record, dataset_sha256, local_dataset
from obf.data.objectives import (
    PAIRED_WINDOWS,
    Batch,
    Example,
    ExampleSampler,
    collate,
    continue_example,
    paired_example,
    span_corrupt,
    windows_example,
)

__all__ = [
    "Batch",
    "collate",
    "continue_example",
    "DataError",
    "Dataset",
    "dataset_sha256",
    "Example",
    "ExampleSampler",
    "local_dataset",
    "paired_example",
    "PAIRED_WINDOWS",
    "Record",
    "span_corrupt",
    "windows_example",
]
