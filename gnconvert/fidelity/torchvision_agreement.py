"""How much of Detectron's answer the torchvision Mask R-CNN keeps, measured on the golden runs.

Two measurements, because they answer different questions:
- the free run (`free_run`): the torchvision model on the images as a user runs it, its detections
  matched to Detectron's under the golden README's strict criteria and the loose ones of
  `mode_fidelity`, and box/mask AP with Detectron's detections as the ground truth;
- each stage on Detectron's own input (`stages`): its FPN on Detectron's input blob (the weights:
  float noise), its box head and decoding on Detectron's 1000 RoIs (class probabilities, and each
  RoI's box for Detectron's best class), its mask head and paste on Detectron's final boxes.  These
  isolate what torchvision's conventions cost (no "+1" in RoIAlign and decoding, decoding in resized
  pixels, F.interpolate paste) from the ranking decisions downstream.

The seeded weights give 100 near-tied detections per image (scores within 1e-3 of each other), so
any perturbation reorders the free run (gnconvert's own bf16 mode keeps 0.8% strictly); the stages
measure the conventions on a scale that also holds for trained weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from gnconvert.fidelity import golden_format
from gnconvert.fidelity.matching import box_iou, mask_iou
from gnconvert.fidelity.mode_fidelity import ModeFidelity, judge_runs
from gnconvert.fidelity.parity import relative_error


@dataclass
class StageAgreement:
    image: str
    fpn_rel_error: float  # of max |value|, over the golden P2..P6 crops
    rpn_rel_error: float  # RPN objectness logits and deltas on the same features, vs ours (Detectron's RPN
    #                       maps are not in the golden files)
    cls_prob_max_diff: float  # on Detectron's RoIs
    box_iou_min: float  # per RoI, Detectron's best class: torchvision's decoded box vs Detectron's
    box_iou_median: float
    mask_iou_min: Optional[float]  # torchvision's mask on Detectron's final boxes vs Detectron's mask
    mask_iou_median: Optional[float]


@dataclass
class TorchvisionAgreement:
    tag: str
    free: ModeFidelity
    stages: List[StageAgreement] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        return {"tag": self.tag, "free_run": self.free.to_dict(), "stages": [vars(s) for s in self.stages]}

    def format(self) -> str:
        f = self.free
        lines = [f"torchvision MaskRCNN vs Detectron, {self.tag}: {f.summary()}"]
        for i in f.images:
            lines.append(f"  free run {i.image}: {i.strict}/{i.reference} strict, {i.loose}/{i.reference} loose "
                         f"({i.ours} detections, {i.seconds:.1f}s)")
        for s in self.stages:
            masks = "n/a" if s.mask_iou_min is None else f"min {s.mask_iou_min:.3f}, median {s.mask_iou_median:.3f}"
            lines.append(f"  on Detectron's inputs {s.image}: FPN {s.fpn_rel_error:.1e}, RPN head {s.rpn_rel_error:.1e} "
                         f"of max |value|; class prob max diff {s.cls_prob_max_diff:.1e}; box IoU min "
                         f"{s.box_iou_min:.3f}, median {s.box_iou_median:.4f}; mask IoU {masks}")
        return "\n".join(lines)


def free_run(predictor, folder: Path, tag: str, images: Sequence[str], mode: str = "torchvision") -> ModeFidelity:
    """Any predictor (`predict(path) -> Detections`) on golden `images`, judged like `mode_fidelity.measure`."""
    return judge_runs(lambda path: (predictor.predict(path), {}), folder, tag, images, mode, intermediates=False)


def _tv_boxes(boxes: np.ndarray):
    """Detectron's inclusive boxes -> torchvision's (right/bottom edge = last pixel + 1)."""
    import torch

    b = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4).clone()
    b[:, 2:] += 1.0
    return b


def stages(tv_model, network, arch, folder: Path, tag: str, name: str) -> StageAgreement:
    """Each stage of `tv_model` on Detectron's own input to it (see the module docstring); `network`
    (our MaskRCNNNetwork) gives the RPN head's reference outputs."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import maskrcnn_inference
    from torchvision.models.detection.transform import paste_masks_in_image, resize_boxes
    from torchvision.ops.boxes import clip_boxes_to_image

    from gnconvert.export.torchvision_adapter import binary_rles
    from gnconvert.inference import box_postprocess, preprocess
    from gnconvert.inference.cv2_resize import round_half_even
    from gnconvert.results import coco_categories

    golden = golden_format.load(folder, tag, name)
    inter, t = golden.intermediates, arch.test
    bgr = preprocess.load_image(str(Path(folder) / "images" / name))
    h, w = bgr.shape[:2]
    means = torch.tensor(arch.pixel_means, dtype=torch.float64)
    data, _, scale = preprocess.input_blob(torch.from_numpy(bgr), means, t.scale, t.max_size, arch.coarsest_stride)
    resized = (int(round_half_even(h * scale)), int(round_half_even(w * scale)))
    columns = torch.tensor([0] + [coco_categories.coco_id(c) for c in range(1, arch.num_classes)])
    heads = tv_model.roi_heads
    with torch.no_grad():
        feats = tv_model.backbone(data.flip(1))  # torchvision's conv1 takes RGB
        levels = list(feats.values())
        fpn = max(relative_error(f[0, :8, :16, :16].numpy(), inter[f"p{k}_crop"])
                  for k, f in enumerate(levels, start=arch.rpn_min_level))
        theirs_rpn = tv_model.rpn.head(levels)
        ours_rpn = network.rpn_head(network.features(data))
        rpn = max(relative_error(a.numpy(), b.numpy()) for x, y in zip(theirs_rpn, ours_rpn) for a, b in zip(x, y))

        rois = inter["rois"][:, 1:5]
        proposals = _tv_boxes(rois)
        logits, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, [proposals], [resized])))
        probs = F.softmax(logits, -1)[:, columns].numpy()
        cls_diff = float(np.abs(probs - inter["cls_prob"]).max())
        decoded = heads.box_coder.decode(regression, [proposals]).reshape(len(rois), -1, 4)
        decoded = resize_boxes(clip_boxes_to_image(decoded, resized).reshape(-1, 4), resized, (h, w))
        decoded = decoded.reshape(len(rois), -1, 4)[:, columns].numpy()
        decoded[:, :, 2:] -= 1.0
        weights = [float(x) for x in arch.bbox_reg_weights]
        reference = box_postprocess.class_boxes(torch.from_numpy(rois), torch.from_numpy(inter["bbox_pred"]), scale,
                                                h, w, weights, arch.bbox_xform_clip).reshape(len(rois), -1, 4).numpy()
        best = inter["cls_prob"][:, 1:].argmax(1) + 1
        ious = np.array([box_iou(reference[i, c], decoded[i, c])[0, 0] for i, c in enumerate(best)])

        dets, mask_ious = golden.detections, []
        if len(dets):
            boxes = resize_boxes(_tv_boxes(dets.boxes), (h, w), resized)
            labels = torch.tensor([coco_categories.coco_id(c) for c in dets.classes])
            mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(feats, [boxes], [resized])))
            probs_28 = maskrcnn_inference(mask_logits, [labels])[0]
            pasted = paste_masks_in_image(probs_28, resize_boxes(boxes, resized, (h, w)), (h, w))[:, 0]
            binary = (pasted > t.mask_thresh_binarize).to(torch.uint8).numpy()
            mask_ious = [mask_iou(a, b) for a, b in zip(dets.masks_rle or [], binary_rles(binary))]
    return StageAgreement(
        image=name, fpn_rel_error=fpn, rpn_rel_error=rpn, cls_prob_max_diff=cls_diff,
        box_iou_min=float(ious.min()), box_iou_median=float(np.median(ious)),
        mask_iou_min=float(min(mask_ious)) if mask_ious else None,
        mask_iou_median=float(np.median(mask_ious)) if mask_ious else None)


def measure(ckpt, folder: Path, tag: str, images: Sequence[str]) -> TorchvisionAgreement:
    """Both measurements for one seeded checkpoint (a ConvertedCheckpoint of `tag`'s architecture)."""
    from gnconvert.export.common import built_network
    from gnconvert.export.torchvision_adapter import TorchvisionPredictor
    from gnconvert.export.torchvision_api import to_torchvision

    tv_model = to_torchvision(ckpt)
    predictor = TorchvisionPredictor(tv_model, ckpt.arch.test.mask_thresh_binarize)
    network = built_network(ckpt)
    result = TorchvisionAgreement(tag, free_run(predictor, folder, tag, images))
    for name in images:
        result.stages.append(stages(tv_model, network, ckpt.arch, folder, tag, name))
    return result
