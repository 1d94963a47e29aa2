"""`--to timm`: an ImageNet GN backbone (R-50-GN.pkl, R-101-GN.pkl) as timm's own ResNet.

OUT holds the state dict that `timm.create_model("resnet50_gn", pretrained=False, num_classes=1000)`
loads with strict=True (R-101: timm registers no GN name, so `create_model("resnet101", ...,
norm_layer="groupnorm")`, which builds the same layers with GroupNorm(32)).  The sidecar OUT.json is
timm's `config.json` layout (architecture, num_classes, model_args, pretrained_cfg): its mean/std
(RGB, input in 0..1), input size, bilinear interpolation and 0.875 crop make timm's own transforms
feed the network Detectron's preprocessing.  Put OUT as `model.safetensors` and the JSON as
`config.json` in a folder and `timm.create_model("local-dir:FOLDER")` loads both.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.export import backbone_check
from gnconvert.export.common import BUNDLED_IMAGE, built_network
from gnconvert.export.self_check import VerifyReport
from gnconvert.export.torchvision_api import CROP, RESIZE, TIMM_MODELS, require_timm, rgb_mean_std, timm_resnet
from gnconvert.export.torchvision_weights import RGB_MEANS_NOTE, torchvision_state_dict


def outputs(output) -> List[str]:
    """OUT and OUT.json; a missing timm fails here, before the checkpoint is loaded."""
    require_timm()
    return backbone_check.outputs(output)


def loaded_network(ckpt: ConvertedCheckpoint):
    """Our ResNetClassifier with the checkpoint's weights: timm takes the ImageNet backbones only."""
    from gnconvert.architecture import Kind

    require_timm()
    if ckpt.arch.kind != Kind.CLASSIFIER:
        raise UsageError("--to timm takes the ImageNet backbones (R-50-GN.pkl, R-101-GN.pkl); a Mask R-CNN "
                         "goes --to torchvision")
    return built_network(ckpt)


def timm_config(ckpt: ConvertedCheckpoint) -> Dict[str, Any]:
    """timm's config.json for the exported weights."""
    from gnconvert import __version__

    arch = ckpt.arch
    name, model_args = TIMM_MODELS[arch.depth]
    mean, std = rgb_mean_std(arch)
    create = f"timm.create_model({name!r}, pretrained=False, num_classes={arch.num_classes}" + "".join(
        f", {k}={v!r}" for k, v in model_args.items()) + ")"
    return {
        "architecture": name, "num_classes": arch.num_classes, "num_features": arch.stages[-1].out,
        "model_args": dict(model_args),
        "pretrained_cfg": {
            "tag": "detectron_gn_in1k", "custom_load": False, "input_size": [3, CROP, CROP], "fixed_input_size": False,
            "interpolation": "bilinear", "crop_pct": CROP / RESIZE, "crop_mode": "center", "mean": list(mean),
            "std": list(std), "num_classes": arch.num_classes, "pool_size": [7, 7], "first_conv": "conv1",
            "classifier": "fc", "origin_url": "https://github.com/facebookresearch/Detectron/tree/main/projects/GN",
            "description": f"Detectron's ImageNet R-{arch.depth}-GN (Wu & He, Group Normalization), converted by gnconvert",
            "notes": [RGB_MEANS_NOTE, f"create with {create}"],
        },
        "gnconvert": {"exported_by": f"gnconvert {__version__}", "provenance": dict(ckpt.provenance)},
    }


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None) -> None:
    backbone_check.write_state_and_sidecar(paths, torchvision_state_dict(ckpt.state_dict, ckpt.arch), timm_config(ckpt))


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None, reference: Optional[Any] = None,
           image=BUNDLED_IMAGE) -> VerifyReport:
    """timm builds the model, loads OUT strictly, and its data config from OUT.json feeds it; logits vs ours."""
    from timm.data import resolve_data_config

    network = loaded_network(ckpt) if network is None else network
    report = backbone_check.verify_backbone("timm", paths, network, ckpt.arch, timm_resnet, image)
    data = resolve_data_config(pretrained_cfg=backbone_check.read_sidecar(paths[1])["pretrained_cfg"])
    mean, std = rgb_mean_std(ckpt.arch)
    expected = {"mean": mean, "std": std, "interpolation": "bilinear", "input_size": (3, CROP, CROP)}
    same = lambda a, b: (tuple(a) == tuple(b)) if isinstance(b, tuple) else a == b  # noqa: E731
    wrong = [k for k, v in expected.items() if not same(data.get(k), v)]
    if wrong:
        report.problems.append(f"timm's data config from the JSON has other {', '.join(wrong)} than Detectron's")
    return report
