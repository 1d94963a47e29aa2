"""Detectron's sort decisions, reproduced bit for bit.

Detectron picks proposals and processes NMS in the order numpy's default
(introsort) `argsort` / introselect `argpartition` produce on float32 arrays.
With tied scores (sigmoid outputs saturated at exactly 1.0 are common) that order
is an artefact of the algorithm, not of the values.  The reference outputs were
made with numpy 1.23, whose float32 argsort/argpartition are the classic
quicksort/introselect; numpy >= 1.25 on AVX-512/AVX2 machines dispatches float32
to SIMD sorts that order ties differently.  numpy still runs the classic code for
`longdouble`, and widening float32 to an 80-bit longdouble is exact and keeps the
order, so sorting the widened copy gives numpy 1.23's float32 answer.

Where longdouble is just a double (Windows, Apple silicon) that trick does not
apply; there a pure-Python port of the classic algorithms is used instead.

Every function here has a torch fallback for TorchScript (same values, ties
broken by index), so the pipeline can still be scripted.
"""
from __future__ import annotations

import numpy as np
import torch

_EXTENDED_LONGDOUBLE = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


def _widen(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.longdouble)


def argsort(values: np.ndarray) -> np.ndarray:
    """`np.argsort(values)` (default kind) as numpy 1.23 orders float32 ties."""
    values = np.asarray(values)
    if _EXTENDED_LONGDOUBLE:
        return np.argsort(_widen(values))
    from . import classic_sort

    return classic_sort.argsort(values)


def argpartition(values: np.ndarray, kth: int) -> np.ndarray:
    """`np.argpartition(values, kth)` as numpy 1.23 does it for float32."""
    values = np.asarray(values)
    if _EXTENDED_LONGDOUBLE:
        return np.argpartition(_widen(values), kth)
    from . import classic_sort

    return classic_sort.argpartition(values, kth)


def top_k_descending(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, exactly as Detectron's
    GenerateProposalsOp picks its pre-NMS top-k (argpartition, then argsort of
    the negated scores; a plain argsort when k covers everything)."""
    neg = -np.asarray(scores, dtype=np.float32).reshape(-1)
    if k <= 0 or k >= neg.shape[0]:
        return argsort(neg)
    inds = argpartition(neg, k)[:k]
    return inds[argsort(neg[inds])]


def nms_order(scores: np.ndarray) -> np.ndarray:
    """cython_nms's processing order: `scores.argsort()[::-1]`."""
    return argsort(np.asarray(scores, dtype=np.float32))[::-1]


def top_k_descending_torch(scores: torch.Tensor, k: int) -> torch.Tensor:
    """`top_k_descending` for tensors; numpy's tie order unless scripting."""
    if not torch.jit.is_scripting():
        idx = top_k_descending(scores.detach().cpu().numpy(), k)
        return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(scores.device)
    order = torch.sort(scores.reshape(-1), descending=True, stable=True)[1]
    if k > 0:
        order = order[:k]
    return order
