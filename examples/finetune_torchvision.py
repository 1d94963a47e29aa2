"""Fine-tune a converted Detectron GN Mask R-CNN with torchvision's standard training loop.

    gnconvert export 48616381 --to torchvision -o tv_maskrcnn.pth     # once, with gnconvert
    python examples/finetune_torchvision.py tv_maskrcnn.pth           # torch, torchvision (+ its Pillow), pycocotools

The script makes a tiny COCO-format dataset (a few synthetic images with rectangles, discs and
triangles, their masks as RLE in instances.json), builds the model with the README's builder
(pasted below, unchanged), loads the exported weights strictly, replaces the class-specific layers
for the dataset's 3 classes (as torchvision's fine-tuning tutorial does; the rest keeps Detectron's
weights, conv1 and res2 frozen as Detectron trained them), and runs SGD with a linear warm-up on CPU,
printing the five Mask R-CNN losses.  It needs no gnconvert.
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

import argparse  # noqa: E402  (the example's own imports, after the README's builder)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402  (Pillow: installed with torchvision)
from pycocotools import mask as mask_util  # noqa: E402
from torchvision.transforms.functional import to_tensor  # noqa: E402

CATEGORIES = [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "disc"}, {"id": 3, "name": "triangle"}]
HEIGHT, WIDTH = 160, 208


def shape_mask(kind, cx, cy, r):
    """A filled rectangle, disc or triangle of radius r around (cx, cy), as an (H, W) uint8 mask."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    if kind == 1:
        return ((abs(x - cx) <= r) & (abs(y - cy) <= 0.7 * r)).astype(np.uint8)
    if kind == 2:
        return ((x - cx) ** 2 + (y - cy) ** 2 <= r * r).astype(np.uint8)
    return ((y <= cy + r) & (y - (cy - r) >= 2 * abs(x - cx))).astype(np.uint8)


def make_dataset(folder, num_images=2, seed=0):
    """A COCO-format dataset: folder/images/*.png and folder/instances.json (RLE masks)."""
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = rng.randint(0, 60, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        for k, kind in enumerate(rng.permutation([1, 2, 3])):
            cx, cy, r = 35 + 68 * k, rng.randint(45, 115), rng.randint(18, 30)
            m = shape_mask(kind, cx, cy, r)
            pixels[m > 0] = rng.randint(120, 256, 3)
            rle = mask_util.encode(np.asfortranarray(m))
            x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(kind),
                                "bbox": [x, y, w, h], "area": float(m.sum()), "iscrowd": 0,
                                "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()}})
        name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(os.path.join(folder, "images", name))
        images.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
    with open(os.path.join(folder, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)


def load_dataset(folder):
    """(image, target) pairs as torchvision's detection models take them: RGB in 0..1; boxes x1, y1, x2, y2."""
    with open(os.path.join(folder, "instances.json")) as f:
        coco = json.load(f)
    samples = []
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        image = to_tensor(Image.open(os.path.join(folder, "images", im["file_name"])).convert("RGB"))
        masks = [mask_util.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
                 for a in anns]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        samples.append((image, {"boxes": torch.tensor(boxes), "labels": torch.tensor([a["category_id"] for a in anns]),
                                "masks": torch.from_numpy(np.stack(masks))}))
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="the file `gnconvert export MODEL --to torchvision -o FILE` wrote")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--data", help="dataset folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    # small images and few RoIs, so that 20 iterations take a couple of minutes on a CPU
    model = detectron_maskrcnn(args.depth, min_size=HEIGHT, max_size=WIDTH, rpn_pre_nms_top_n_train=300,
                               rpn_post_nms_top_n_train=150, box_batch_size_per_image=64)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True), strict=True)
    classes = len(CATEGORIES) + 1  # new class-specific layers for this dataset's classes
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, classes)
    model.roi_heads.mask_predictor.mask_fcn_logits = nn.Conv2d(256, classes, 1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or tmp
        make_dataset(folder)
        images, targets = zip(*load_dataset(folder))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / 3, total_iters=min(5, args.iterations))
    model.train()
    for it in range(1, args.iterations + 1):
        losses = model(list(images), list(targets))
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        warmup.step()
        parts = " ".join(f"{k}={v.item():.4f}" for k, v in losses.items())
        print(f"iter {it:3d} loss={total.item():.4f} {parts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
