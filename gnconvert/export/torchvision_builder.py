"""Detectron's FPN Mask R-CNN assembled from torchvision's own parts, needing torch + torchvision only.

The code below the imports is the builder the README shows (a test checks that the README's snippet
and the example's copy are this text, and runs the README's one where gnconvert cannot be imported),
so a user can paste it and load `gnconvert export MODEL --to torchvision` output without gnconvert.
"""
# README builder begins
import math
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

DETECTRON_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)


def detectron_cell_anchors(stride, size, ratios=(0.5, 1.0, 2.0)):
    """One FPN level's anchors as Detectron quantises them (generate_anchors.py), in torchvision's
    box convention: Detectron's inclusive x2, y2 plus one."""
    c, boxes = (stride - 1) / 2, []
    for r in ratios:
        w = round(math.sqrt(stride * stride / r))
        w, h = w * size / stride, round(w * r) * size / stride
        boxes.append([c - (w - 1) / 2, c - (h - 1) / 2, c + (w - 1) / 2 + 1, c + (h - 1) / 2 + 1])
    return torch.tensor(boxes)


def detectron_maskrcnn(depth=50, gn=True, **overrides):
    """torchvision's MaskRCNN laid out as Detectron's R-{depth}-FPN: GroupNorm everywhere (gn=True) or
    the BN* baseline (frozen BN, stride in the 1x1, 2-fc box head), Detectron's test settings, COCO
    category ids as labels (91 outputs, like torchvision's COCO models), RGB input in 0..1."""
    norm = (lambda c: nn.GroupNorm(32, c)) if gn else partial(FrozenBatchNorm2d, eps=0.0)
    resnet = getattr(torchvision.models, f"resnet{depth}")(norm_layer=norm)
    if not gn:  # MSRA's ResNets stride a stage's first 1x1 conv; torchvision's the 3x3
        for stage in (resnet.layer2, resnet.layer3, resnet.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    for name, p in resnet.named_parameters():  # Detectron's FREEZE_AT 2: conv1 and res2 are not trained
        p.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    fpn_norm = norm if gn else None
    backbone = BackboneWithFPN(resnet, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [256, 512, 1024, 2048],
                               256, LastLevelMaxPool(), norm_layer=fpn_norm)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    anchors.cell_anchors = [detectron_cell_anchors(2 ** k, 32 * 2 ** (k - 2)) for k in range(2, 7)]
    box_head = FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=norm) if gn else TwoMLPHead(12544, 1024)
    settings = dict(
        min_size=800, max_size=1333, image_std=[1 / 255] * 3,  # Detectron: BGR 0..255 minus means, std 1
        image_mean=[m / 255 for m in reversed(DETECTRON_PIXEL_MEANS_BGR)],
        rpn_anchor_generator=anchors, rpn_head=RPNHead(256, 3), rpn_nms_thresh=0.7,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), box_head=box_head,
        box_predictor=FastRCNNPredictor(1024, 91), bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2),
        mask_head=MaskRCNNHeads(256, [256] * 4, 1, norm_layer=fpn_norm), mask_predictor=MaskRCNNPredictor(256, 256, 91))
    model = MaskRCNN(backbone, **{**settings, **overrides})
    model.rpn.min_size = 1.0  # Detectron keeps proposals at least one pixel wide and high
    return model
# README builder ends
