"""The check of an exported torchvision Mask R-CNN, before the file appears.

1. Reload OUT with `torch.load(weights_only=True)` and OUT.json's builder arguments; load strictly
   into `detectron_maskrcnn` (torch + torchvision code only).
2. Every network part on the bundled image, against ours on the same input (float32 noise): FPN on
   Detectron's input blob (channels reversed), the RPN head, the box head + predictor on our RoIs'
   pooled features (torchvision's rows at COCO ids vs our contiguous ones; the unused ids' class
   probabilities must be exactly 0), the mask head + predictor on our final boxes' features.
3. The builder's settings against the checkpoint's: anchors (Detectron's, +1), sizes, thresholds,
   top-n, box coder weights, RoIAlign resolution, sampling ratio and aligned=False.
4. The whole torchvision pipeline on the image, matched to our (Detectron's) detections: reported,
   not judged, since torchvision's box conventions differ (see `torchvision_agreement`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.export import backbone_check
from gnconvert.export.self_check import VerifyReport, compare_arrays, image_name, reference_detections
from gnconvert.results.detections import Detections

PART_TOLERANCE = 1e-4  # of max(1, max |value|): two implementations of the same layers in float32


@dataclass
class AgreementReport(VerifyReport):
    """A VerifyReport with lines that inform without judging (the detection agreement)."""

    notes: List[str] = field(default_factory=list)

    def format(self) -> str:
        return "\n".join([super().format()] + [f"  {n}" for n in self.notes])


def _setting_problems(tv, arch) -> List[str]:
    """Where the torchvision model's settings are not the checkpoint's."""
    import torch

    from gnconvert.inference.anchors import cell_anchors

    t = arch.test
    heads, rpn = tv.roi_heads, tv.rpn
    expected_anchors = [cell_anchors(2 ** k, arch.anchor_start_size * 2.0 ** (k - arch.rpn_min_level),
                                     arch.aspect_ratios) + np.array([0, 0, 1, 1])
                        for k in range(arch.rpn_min_level, arch.rpn_max_level + 1)]
    checks = {
        "anchors": all(np.array_equal(a.double().numpy(), b)
                       for a, b in zip(rpn.anchor_generator.cell_anchors, expected_anchors))
        and len(rpn.anchor_generator.cell_anchors) == len(expected_anchors),
        "min_size/max_size": (tv.transform.min_size[-1], tv.transform.max_size) == (t.scale, t.max_size),
        "RPN top-n": (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"]) == (
            t.rpn_pre_nms_top_n, t.rpn_post_nms_top_n),
        "RPN NMS and min size": (rpn.nms_thresh, rpn.min_size) == (t.rpn_nms_thresh, 1.0),
        "box score threshold, NMS, detections per image": (heads.score_thresh, heads.nms_thresh,
                                                           heads.detections_per_img) == (
            t.score_thresh, t.nms, t.detections_per_im),
        "box coder weights": tuple(heads.box_coder.weights) == tuple(arch.bbox_reg_weights),
        "RoIAlign": (heads.box_roi_pool.output_size, heads.box_roi_pool.sampling_ratio,
                     heads.mask_roi_pool.output_size, heads.mask_roi_pool.sampling_ratio) == (
            (arch.box_roi_resolution,) * 2, arch.box_sampling_ratio, (arch.mask_roi_resolution,) * 2,
            arch.mask_sampling_ratio),
        "image mean/std": torch.allclose(torch.tensor(tv.transform.image_mean) * 255,
                                         torch.tensor(arch.pixel_means[::-1]), atol=1e-4)
        and torch.allclose(torch.tensor(tv.transform.image_std) * 255, torch.ones(3), atol=1e-5),
    }
    return [f"the torchvision model's {k} differ from the checkpoint's" for k, ok in checks.items() if not ok]


def _compare_parts(report: VerifyReport, tv, network, arch, bgr: np.ndarray, reference: Detections) -> None:
    import torch
    import torch.nn.functional as F

    from gnconvert.inference import mask_postprocess
    from gnconvert.inference.detector import Detector
    from gnconvert.results import coco_categories

    det = Detector(network, arch).eval()
    columns = torch.tensor([0] + [coco_categories.coco_id(c) for c in range(1, arch.num_classes)])
    unused = torch.tensor(sorted(set(range(tv.roi_heads.box_predictor.cls_score.out_features)) - set(columns.tolist())))
    heads = tv.roi_heads

    with torch.no_grad():
        data, im_info, scale = det.input_blob(torch.from_numpy(bgr))
        feats, logits, deltas = det.features(data)
        theirs = list(tv.backbone(data.flip(1)).values())
        compare_arrays(report, "FPN", torch.cat([f.flatten() for f in theirs]), torch.cat([f.flatten() for f in feats]),
                       PART_TOLERANCE)
        their_logits, their_deltas = tv.rpn.head(feats)
        compare_arrays(report, "RPN head", torch.cat([x.flatten() for x in their_logits + their_deltas]),
                       torch.cat([x.flatten() for x in logits + deltas]), PART_TOLERANCE)
        level_boxes, level_scores = det.proposals([x[0] for x in logits], [x[0] for x in deltas], im_info,
                                                  (data.shape[2], data.shape[3]))
        rois = det.collect(level_boxes, level_scores)
        x = det._pool(feats, rois, arch.box_roi_resolution, arch.box_sampling_ratio)
        ours_cls, ours_box = network.box_predictor(network.box_head(x))
        their_cls, their_box = heads.box_predictor(heads.box_head(x))
        box_rows = (columns[:, None] * 4 + torch.arange(4)).flatten()
        compare_arrays(report, "box head", torch.cat([their_cls[:, columns].flatten(), their_box[:, box_rows].flatten()]),
                       torch.cat([ours_cls.flatten(), ours_box.flatten()]), PART_TOLERANCE)
        if len(unused) and float(F.softmax(their_cls, -1)[:, unused].max()) != 0.0:
            report.problems.append("the unused COCO ids get class probabilities above 0")
        if len(reference):
            boxes = torch.from_numpy(np.asarray(reference.boxes, np.float32))
            m = det._pool(feats, mask_postprocess.mask_rois(boxes, scale), arch.mask_roi_resolution, arch.mask_sampling_ratio)
            compare_arrays(report, "mask head", heads.mask_predictor(heads.mask_head(m))[:, columns],
                           network.mask_head(m), PART_TOLERANCE)


def verify_maskrcnn(ckpt: ConvertedCheckpoint, paths: List[str], network, reference: Optional[Detections],
                    image) -> VerifyReport:
    from gnconvert.export.torchvision_adapter import TorchvisionPredictor
    from gnconvert.export.torchvision_builder import detectron_maskrcnn
    from gnconvert.fidelity.mode_fidelity import LOOSE_IOU, LOOSE_SCORE, strict_and_loose
    from gnconvert.inference.preprocess import load_image

    arch = ckpt.arch
    report = AgreementReport("torchvision", paths[0], f"{image_name(image)} (network parts, settings, whole pipeline)")
    tv = detectron_maskrcnn(**backbone_check.read_sidecar(paths[1])["builder_kwargs"])
    try:
        tv.load_state_dict(backbone_check.read_state(paths[0]), strict=True)
    except RuntimeError as e:
        report.problems.append(f"the weights do not load strictly: {str(e).splitlines()[0]}")
        return report
    tv.eval()
    report.problems += _setting_problems(tv, arch)
    bgr = load_image(image)
    if reference is None or reference.masks_rle is None:
        reference = reference_detections(network, arch, bgr)
    _compare_parts(report, tv, network, arch, bgr, reference)
    theirs = TorchvisionPredictor(tv, arch.test.mask_thresh_binarize).predict(bgr)
    strict, loose = strict_and_loose(reference, theirs)
    n = len(reference)
    report.notes.append(
        f"torchvision's whole pipeline reproduces {strict}/{n} of gnconvert's (Detectron's) detections "
        f"strictly (IoU>=0.99, |dscore|<=1e-3) and {loose}/{n} loosely (IoU>={LOOSE_IOU}, "
        f"|dscore|<={LOOSE_SCORE}); it has {len(theirs)}: torchvision pools RoIs without Detectron's \"+1\" edge, "
        "resizes with F.interpolate and decodes boxes in resized pixels (measure: gnconvert verify --backend "
        "torchvision, or scripts/bench_torchvision.py)")
    return report
