"""COCO images decoded in DataLoader workers, so the model never waits on JPEG decoding.

An image that cannot be read or decoded comes back as None with the reason; the
verify loop names it in a warning, counts it and goes on.
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class LoadedImage(NamedTuple):
    image_id: int
    path: str
    image: Optional[np.ndarray]  # BGR uint8 HxWx3, as Detectron's cv2.imread gives it
    error: Optional[str]


class CocoImages(Dataset):
    """(image_id, file path) pairs -> LoadedImage."""

    def __init__(self, items: Sequence[Tuple[int, Path]]):
        self.items = [(int(i), str(p)) for i, p in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedImage:
        image_id, path = self.items[index]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            reason = "file not found" if not Path(path).is_file() else "cv2 could not decode it"
            return LoadedImage(image_id, path, None, reason)
        return LoadedImage(image_id, path, image, None)


def _init_worker(_):
    cv2.setNumThreads(1)  # one decoder thread per worker: workers are the parallelism
    torch.set_num_threads(1)


def _worker_context():
    # Workers start from a clean process: forking a parent whose OpenCV / OpenMP thread pools
    # (or CUDA) are already running can deadlock the child (seen: cv2 in a forked worker).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def image_loader(items: Sequence[Tuple[int, Path]], batch_size: int = 1, workers: int = 2) -> DataLoader:
    """Batches of LoadedImage in `items` order, decoded `workers` at a time ahead of the model."""
    # collate_fn=list: the images differ in size, so a batch stays a list of them
    return DataLoader(CocoImages(items), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=list,
                      worker_init_fn=_init_worker if workers else None,
                      prefetch_factor=4 if workers else None, persistent_workers=False,
                      multiprocessing_context=_worker_context() if workers else None)
