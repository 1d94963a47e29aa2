"""The image-size-dependent stages in traceable form: Detectron's resize rule with traced output
sizes, per-level proposal lists split by mask, the per-image detection limit and the mask paste
straight into (N, H, W) masks.  Each computes what its eager counterpart computes."""
from __future__ import annotations

from typing import Any, List, Tuple, cast

import torch
from torch import Tensor

from gnconvert.inference import cv2_resize
from gnconvert.inference.exportable.nms import batched_nms
from gnconvert.inference.exportable.sorting import size_of


# ----------------------------------------------------------------------------- input
def _taps(dst, src, scale: Tensor, exact: Tensor, device) -> Tuple[Tensor, Tensor, Tensor]:
    """`cv2_resize._taps` with the exact-ratio choice as data: both ways of `_taps_at`, one picked."""
    d = torch.arange(dst, dtype=torch.float64, device=device)
    pos = torch.where(exact, (d + 0.5) * scale - 0.5, (d + 0.5 - 0.5 * scale) / scale.expand_as(d))
    last_pixel = exact | (src < 2)
    taps = zip(cv2_resize._taps_at(pos, src, True), cv2_resize._taps_at(pos, src, False))
    index, second, weight = (torch.where(last_pixel, a, b) for a, b in taps)
    return index, second, weight


def _resize(x: Tensor, factor: Tensor, oh: Tensor, ow: Tensor, out_h, out_w) -> Tensor:
    """`cv2_resize.resize_by_factor(x, factor)` to traced sizes out_h = round(H * factor) (oh, the
    same as a float64 tensor) and out_w.  Where eager copies an image of unchanged size, the taps
    here are the pixels themselves with weight 0, which blends to the same values."""
    in_h, in_w = x.shape[0], x.shape[1]
    fh, fw = size_of(x, 0).to(torch.float64), size_of(x, 1).to(torch.float64)
    same = (oh == fh) & (ow == fw)
    exact = ((ow / fw == factor) & (oh / fh == factor)) | same
    one = torch.ones_like(factor)
    x0, x1, wx = _taps(out_w, in_w, torch.where(same, one, torch.where(exact, fw / ow, factor)), exact, x.device)
    y0, y1, wy = _taps(out_h, in_h, torch.where(same, one, torch.where(exact, fh / oh, factor)), exact, x.device)
    left = x.index_select(1, x0)
    rows = cv2_resize._fma(x.index_select(1, x1) - left, wx[:, None], left)  # `_blend_into`'s arithmetic
    top = rows.index_select(0, y0)
    return cv2_resize._fma(rows.index_select(0, y1) - top, wy[:, None, None], top)


def input_blob(image: Tensor, pixel_means: Tensor, target: int, max_size: int, stride: int
               ) -> Tuple[Tensor, Tensor, Any]:
    """`preprocess.input_blob` with the scale a float64 0-d tensor and traced resized sizes."""
    dev = image.device
    im = (image.to(torch.float64) - pixel_means).to(torch.float32)
    h, w = size_of(image, 0).to(torch.float64), size_of(image, 1).to(torch.float64)
    scale = float(target) / torch.minimum(h, w)
    longer = torch.maximum(h, w)
    scale = torch.where(torch.round(scale * longer) > max_size, float(max_size) / longer, scale)
    oh, ow = torch.round(h * scale), torch.round(w * scale)
    rh = cast(int, oh.to(torch.int64).item())  # unbacked SymInts
    rw = cast(int, ow.to(torch.int64).item())
    torch._check(rh >= 1)
    torch._check(rw >= 1)
    torch._check(rh <= max_size)
    torch._check(rw <= max_size)
    ph = -(-rh // stride) * stride
    pw = -(-rw // stride) * stride
    torch._check(ph >= rh)
    torch._check(pw >= rw)
    resized = _resize(im, scale, oh, ow, rh, rw)
    data = torch.nn.functional.pad(resized.permute(2, 0, 1), (0, pw - rw, 0, ph - rh))[None].contiguous()
    im_info = torch.stack((torch.full((), 0.0, device=dev) + size_of(data, 2).to(torch.float32),
                           torch.full((), 0.0, device=dev) + size_of(data, 3).to(torch.float32),
                           scale.to(torch.float32)))
    return data, im_info, scale


# ----------------------------------------------------------------------------- proposals
def suppress_per_level(level_boxes: List[Tensor], level_scores: List[Tensor], nms_thresh: float,
                       post_nms_top_n: int) -> Tuple[List[Tensor], List[Tensor]]:
    """`proposals.suppress_per_level`: the levels' lists taken apart by level masks."""
    from gnconvert.inference.boxes import float32
    from gnconvert.inference.sorting import segment_ids

    if nms_thresh <= 0:
        return level_boxes, level_scores
    boxes = torch.cat(level_boxes)
    scores = torch.cat(level_scores)
    lengths = torch.stack([size_of(b[:, 0]) for b in level_boxes])
    keep = batched_nms(boxes, scores, lengths, float32(nms_thresh))
    level = segment_ids(lengths)[keep]
    counts = torch.zeros_like(lengths).index_add_(0, level, torch.ones_like(level))
    if post_nms_top_n > 0:
        rank = torch.arange(keep.shape[0], device=keep.device) - (torch.cumsum(counts, 0) - counts)[level]
        within = rank < post_nms_top_n
        keep, level = keep[within], level[within]
    out_boxes = [boxes[keep[level == i]] for i in range(len(level_boxes))]
    return out_boxes, [scores[keep[level == i]] for i in range(len(level_boxes))]


# ----------------------------------------------------------------------------- detections
def limit_detections(boxes: Tensor, scores: Tensor, classes: Tensor, detections_per_im: int
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """Keep score >= the detections_per_im-th best, when there are more (box_postprocess); with
    fewer, the threshold padding gives -inf and everything stays, in order."""
    if detections_per_im <= 0:
        return boxes, scores, classes
    padded = torch.cat((scores, torch.full((detections_per_im,), float("-inf"), dtype=scores.dtype,
                                           device=scores.device)))
    image_thresh = torch.sort(padded)[0][size_of(scores)]
    limit = torch.nonzero(scores >= image_thresh).reshape(-1)
    return boxes[limit], scores[limit], classes[limit]


# ----------------------------------------------------------------------------- masks
def paste_dense(probs: Tensor, boxes: Tensor, height, width, threshold: float) -> Tensor:
    """`mask_postprocess.paste` then `dense`: (N, M, M) probabilities -> (N, H, W) uint8 masks,
    each pixel read from its box's resized mask (one padded resize for all boxes)."""
    from gnconvert.inference.mask_postprocess import reference_boxes

    n, m = probs.shape[0], probs.shape[-1]
    dev = probs.device
    ref = reference_boxes(boxes, m)
    ref_w = torch.clamp(ref[:, 2] - ref[:, 0] + 1, min=1)
    ref_h = torch.clamp(ref[:, 3] - ref[:, 1] + 1, min=1)
    one = torch.ones((1,), dtype=torch.int64, device=dev)
    longest_w = cast(int, torch.cat((ref_w, one)).max().item())
    longest_h = cast(int, torch.cat((ref_h, one)).max().item())
    torch._check(longest_w >= 1)
    torch._check(longest_h >= 1)
    padded = torch.zeros((n, m + 2, m + 2), dtype=torch.float32, device=dev)
    padded[:, 1:-1, 1:-1] = probs
    binary = cv2_resize.resize_each_above(padded, ref_w, ref_h, longest_w, longest_h, threshold)
    ys = torch.arange(height, device=dev)[None, :]
    xs = torch.arange(width, device=dev)[None, :]
    inside_y = (ys >= ref[:, 1:2]) & (ys <= ref[:, 3:4])  # the crop: the box's rows inside the image
    inside_x = (xs >= ref[:, 0:1]) & (xs <= ref[:, 2:3])
    ry = torch.clamp(ys - ref[:, 1:2], 0, longest_h - 1)
    rx = torch.clamp(xs - ref[:, 0:1], 0, longest_w - 1)
    rows = torch.gather(binary, 1, ry[:, :, None].expand(n, ry.shape[1], binary.shape[2]))
    cols = torch.gather(rows, 2, rx[:, None, :].expand(n, rows.shape[1], rx.shape[1]))
    return (cols & inside_y[:, :, None] & inside_x[:, None, :]).to(torch.uint8)
