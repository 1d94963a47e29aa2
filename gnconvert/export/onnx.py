"""`--to onnx` (opset 17): the network's three learned parts, each checked with onnxruntime.

Written (for `-o model.onnx`):
- `model.onnx`: body + FPN + RPN head.  Input `images` (N, 3, H, W) float32, the
  mean-subtracted, resized BGR blob, any size (the graph zero-pads it to multiples
  of 32 at the bottom and right, as Detectron does);
  outputs `p2`..`p6`, `rpn_logits_2`..`_6` (objectness logits, no sigmoid) and
  `rpn_deltas_2`..`_6` (channel 4a+k).
- `model.box_head.onnx`: box head + predictor.  Input `roi_features` (R, 256, 7, 7);
  outputs `cls_score` (R, 81) logits and `bbox_pred` (R, 324).
- `model.mask_head.onnx`: input `roi_features` (R, 256, 14, 14); output `mask_logits`
  (R, 81, 28, 28).

The steps between them stay outside ONNX on purpose: Detectron's proposals and
detections depend on its NMS ("+1" box sides, suppression at IoU >= threshold,
numpy's tie order) and its OpenCV resize and paste, which ONNX's NonMaxSuppression
(IoU > threshold, no "+1") and Resize cannot reproduce; an ONNX graph would give
different detections.  Use the TorchScript export for the whole pipeline, or run
these parts and port `gnconvert.inference` around them.  Each file's
metadata_props hold the architecture, test settings, provenance and its part.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.export.common import BUNDLED_IMAGE, loaded_network, write_file
from gnconvert.export.self_check import TOLERANCES, VerifyReport, compare_arrays, image_name
from gnconvert.model.roi_heads import BoxOutputs
from gnconvert.results.detections import Detections

OPSET = 17
LEVELS = (2, 3, 4, 5, 6)
IMAGE_OUTPUTS = [f"p{k}" for k in LEVELS] + [f"rpn_logits_{k}" for k in LEVELS] + [f"rpn_deltas_{k}" for k in LEVELS]


class _ImageLevel(nn.Module):
    """The network on a blob of any size: padded with zeros at the bottom and right to a
    multiple of the coarsest stride first, as Detectron pads its input (a blob that is
    already padded passes unchanged)."""

    def __init__(self, network: nn.Module, stride: int):
        super().__init__()
        self.network = network
        self.stride = stride

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        import torch.nn.functional as F

        h, w = images.shape[2], images.shape[3]
        images = F.pad(images, [0, (self.stride - w % self.stride) % self.stride,
                                0, (self.stride - h % self.stride) % self.stride])
        features, logits, deltas = self.network(images)
        return tuple(features) + tuple(logits) + tuple(deltas)


def outputs(output) -> List[str]:
    """OUT itself (body + FPN + RPN head) and two siblings named after it (box head, mask head)."""
    output = os.fspath(output)
    stem = output[: -len(".onnx")] if output.endswith(".onnx") else output
    return [output, f"{stem}.box_head.onnx", f"{stem}.mask_head.onnx"]


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--to onnx needs the onnx and onnxruntime packages ({e.name} is missing); "
                         "install them with: pip install 'gnconvert[onnx]'") from None


def _parts(network: nn.Module, arch) -> Dict[str, Tuple[Any, Tensor, List[str], List[str], Dict]]:
    import torch

    c = arch.fpn_dim
    image_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    image_axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in IMAGE_OUTPUTS})
    return {
        "image_level": (_ImageLevel(network, arch.coarsest_stride), torch.zeros(1, 3, 128, 192), ["images"],
                        IMAGE_OUTPUTS, image_axes),
        "box_head": (BoxOutputs(network), torch.zeros(2, c, arch.box_roi_resolution, arch.box_roi_resolution),
                     ["roi_features"], ["cls_score", "bbox_pred"],
                     {"roi_features": {0: "rois"}, "cls_score": {0: "rois"}, "bbox_pred": {0: "rois"}}),
        "mask_head": (network.mask_head, torch.zeros(2, c, arch.mask_roi_resolution, arch.mask_roi_resolution),
                      ["roi_features"], ["mask_logits"], {"roi_features": {0: "rois"}, "mask_logits": {0: "rois"}}),
    }


def _metadata(ckpt: ConvertedCheckpoint, part: str) -> Dict[str, str]:
    from gnconvert import __version__

    arch = ckpt.arch.to_dict()
    return {
        "gnconvert_part": part,
        "architecture": json.dumps(arch),
        "test_settings": json.dumps(arch["test"]),
        "provenance": json.dumps({**ckpt.provenance, "exported_by": f"gnconvert {__version__}"}),
    }


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    """Export the three parts to paths (as `outputs` orders them), with metadata; each is
    serialised in memory and then written, so a full disk is an error, not a crash."""
    import io

    import onnx
    import torch

    network = loaded_network(ckpt) if network is None else network
    for path, (part, (module, example, inputs, names, axes)) in zip(paths, _parts(network, ckpt.arch).items()):
        buf = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(module.eval(), (example,), buf,  # type: ignore[arg-type]  # BytesIO is accepted
                              opset_version=OPSET, dynamo=False,
                              input_names=inputs, output_names=names, dynamic_axes=axes)
        model = onnx.load_from_string(buf.getvalue())
        for key, value in _metadata(ckpt, part).items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        write_file(path, model.SerializeToString())


def _check_inputs(network, arch, image) -> Tuple[Tensor, Tensor, Tensor]:
    """A smaller blob of `image` (short side 320) and RoI features pooled from its FPN maps."""
    import numpy as np
    import torch

    from gnconvert.inference import roi_levels
    from gnconvert.inference.preprocess import input_blob, load_image

    means = torch.tensor(arch.pixel_means, dtype=torch.float64)
    data, _, _ = input_blob(torch.from_numpy(load_image(image)), means, 320, 533, arch.coarsest_stride)
    with torch.no_grad():
        features = network.features(data)[: arch.roi_max_level - arch.rpn_min_level + 1]
    h, w = data.shape[2:]
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 1, (16, 2)) * [w * 0.8, h * 0.8]
    size = np.exp(rng.uniform(np.log(8), np.log(min(h, w) * 0.8), (16, 2)))
    rois = torch.from_numpy(np.hstack([xy, xy + size]).astype(np.float32))
    levels = roi_levels.assign_levels(rois, arch.roi_min_level, arch.roi_max_level, arch.roi_canonical_scale,
                                      arch.roi_canonical_level)

    def pool(res: int, ratio: int) -> Tensor:
        return roi_levels.multilevel_roi_align(features, rois, levels, arch.roi_min_level, res, ratio)

    with torch.no_grad():
        return data, pool(arch.box_roi_resolution, arch.box_sampling_ratio), pool(
            arch.mask_roi_resolution, arch.mask_sampling_ratio)


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None,
           reference: Optional[Detections] = None, image=BUNDLED_IMAGE) -> VerifyReport:
    """Run each file with onnxruntime on inputs made from `image`; compare with PyTorch.

    Differences are max |onnx - torch| / max(1, max |torch|) per output.
    """
    import onnxruntime as ort
    import torch

    network = loaded_network(ckpt) if network is None else network
    parts = _parts(network, ckpt.arch)  # image level, box head, mask head: the order of `paths` and of the inputs
    report = VerifyReport("onnx", ", ".join(paths), f"{image_name(image)} at short side 320 and 16 RoIs pooled from it")
    for (part, (module, _, _, output_names, _)), path, example in zip(parts.items(), paths,
                                                                      _check_inputs(network, ckpt.arch, image)):
        with torch.no_grad():
            expected = module(example)
        expected = [expected] if isinstance(expected, Tensor) else list(expected)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(output_names, {session.get_inputs()[0].name: example.numpy()})
        for out_name, g, e in zip(output_names, got, expected):
            compare_arrays(report, f"{part}.{out_name}", g, e.numpy(), TOLERANCES["onnx"])
    return report
