"""Caffe2 blob names <-> PyTorch parameter names, as one explicit table per Architecture.

The table is the single source of truth for what a checkpoint must hold: each row
names one Detectron blob, the PyTorch parameter it becomes, its shape and whether
training updated it (then Detectron also saved a `<blob>_momentum`).  Conversion is
exhaustive: every blob lands in exactly one parameter or in an explicit drop list
with its reason; anything else is a MappingError that names the blobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from gnconvert.architecture import AFFINE, GN, Architecture, BoxHeadType, Kind, MaskHeadType, Norm
from gnconvert.errors import MappingError

Shape = Tuple[int, ...]

MOMENTUM_SUFFIX = "_momentum"
# Blobs a checkpoint may carry that no parameter takes, and why we drop them.
TRAINING_COUNTERS = {"iter": "training iteration counter", "lr": "training learning rate"}
IMAGENET_FC = ("pred_w", "pred_b")
IMAGENET_FC_REASON = "ImageNet classifier fc carried over unused from pre-training"
# The MSRA ImageNet ResNets (MSRA/R-50.pkl) that the 12_2017 BN* detectors started
# from name their fc `fc1000` and keep a conv1 bias that Detectron's stem (no bias)
# never loads; Detectron carries all three over into the trained checkpoint.
MSRA_LEFTOVERS = {
    "fc1000_w": "MSRA ImageNet classifier fc carried over unused from pre-training",
    "fc1000_b": "MSRA ImageNet classifier fc carried over unused from pre-training",
    "conv1_b": "MSRA ImageNet conv1 bias carried over unused (Detectron's stem conv has no bias)",
}
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Rule:
    """One row of the table: Detectron blob `blob` is PyTorch parameter `param`."""

    blob: str
    param: str
    shape: Shape
    trainable: bool


# --------------------------------------------------------------------------- #
# The table
# --------------------------------------------------------------------------- #


class _Table:
    def __init__(self) -> None:
        self.rules: List[Rule] = []

    def add(self, blob: str, param: str, shape: Shape, trainable: bool) -> None:
        self.rules.append(Rule(blob, param, tuple(shape), trainable))

    def conv(self, blob: str, param: str, out: int, inp: int, k: int, trainable: bool, bias: bool) -> None:
        """Caffe2 conv `blob_w` (+ `blob_b`) -> `param.weight` (+ `param.bias`)."""
        self.add(f"{blob}_w", f"{param}.weight", (out, inp, k, k), trainable)
        if bias:
            self.add(f"{blob}_b", f"{param}.bias", (out,), trainable)

    def norm(self, blob: str, param: str, channels: int, kind: str, trainable: bool) -> None:
        """GroupNorm `blob_gn_{s,b}` or AffineChannel `blob_bn_{s,b}` -> `param.{weight,bias}`."""
        suffix = {GN.value: "gn", AFFINE.value: "bn"}[kind]
        self.add(f"{blob}_{suffix}_s", f"{param}.weight", (channels,), trainable)
        self.add(f"{blob}_{suffix}_b", f"{param}.bias", (channels,), trainable)

    def fc(self, blob: str, param: str, out: int, inp: int, trainable: bool) -> None:
        self.add(f"{blob}_w", f"{param}.weight", (out, inp), trainable)
        self.add(f"{blob}_b", f"{param}.bias", (out,), trainable)


def stage_output_blob(arch: Architecture, stage: int) -> str:
    """Detectron's name for a stage's output, e.g. `res4_22_sum` in R-101."""
    return f"res{stage}_{arch.stages[stage - 2].blocks - 1}_sum"


def _body(t: _Table, arch: Architecture, prefix: str) -> None:
    # Body parameters below FREEZE_AT were frozen; AffineChannel is never trained.
    conv_trained = lambda stage: stage > arch.freeze_at and arch.kind != Kind.CLASSIFIER  # noqa: E731
    norm_trained = lambda stage: conv_trained(stage) and arch.norm == GN  # noqa: E731
    t.conv("conv1", f"{prefix}.stem.conv", 64, 3, 7, conv_trained(1), bias=False)
    stem_norm = "conv1" if arch.norm == GN else "res_conv1"
    t.norm(stem_norm, f"{prefix}.stem.norm", 64, arch.norm, norm_trained(1))
    dim_in = 64
    for spec in arch.stages:
        stage, inner, out = spec.index, spec.inner, spec.out
        for k in range(spec.blocks):
            blob, param = f"res{stage}_{k}", f"{prefix}.res{stage}.{k}"
            if k == 0:
                t.conv(f"{blob}_branch1", f"{param}.shortcut.conv", out, dim_in, 1, conv_trained(stage), bias=False)
                t.norm(f"{blob}_branch1", f"{param}.shortcut.norm", out, arch.norm, norm_trained(stage))
            for i, (branch, cout, cin, ksize) in enumerate(
                (("2a", inner, dim_in, 1), ("2b", inner, inner, 3), ("2c", out, inner, 1)), start=1
            ):
                t.conv(f"{blob}_branch{branch}", f"{param}.conv{i}", cout, cin, ksize, conv_trained(stage), bias=False)
                t.norm(f"{blob}_branch{branch}", f"{param}.norm{i}", cout, arch.norm, norm_trained(stage))
            dim_in = out


def _conv_norm(t: _Table, blob: str, param: str, out: int, inp: int, k: int, norm: str) -> None:
    """A head/FPN conv: GN convs have no bias; the others have one and no norm."""
    t.conv(blob, f"{param}.conv", out, inp, k, True, bias=norm != GN)
    if norm == GN:
        t.norm(blob, f"{param}.norm", out, GN, True)


def _fpn(t: _Table, arch: Architecture) -> None:
    for level in (2, 3, 4, 5):
        c_in = arch.stages[level - 2].out
        inner = f"fpn_inner_{stage_output_blob(arch, level)}"
        lateral = inner if level == 5 else f"{inner}_lateral"
        _conv_norm(t, lateral, f"fpn.lateral{level}", arch.fpn_dim, c_in, 1, arch.fpn_norm)
        _conv_norm(t, f"fpn_{stage_output_blob(arch, level)}", f"fpn.output{level}", arch.fpn_dim, arch.fpn_dim, 3,
                   arch.fpn_norm)


def _rpn(t: _Table, arch: Architecture) -> None:
    level, a, dim = arch.rpn_min_level, arch.num_anchors, arch.fpn_dim
    t.conv(f"conv_rpn_fpn{level}", "rpn_head.conv", dim, dim, 3, True, bias=True)
    t.conv(f"rpn_cls_logits_fpn{level}", "rpn_head.cls_logits", a, dim, 1, True, bias=True)
    t.conv(f"rpn_bbox_pred_fpn{level}", "rpn_head.bbox_pred", 4 * a, dim, 1, True, bias=True)


def _box_head(t: _Table, arch: Architecture) -> None:
    r2 = arch.box_roi_resolution ** 2
    if arch.box_head == BoxHeadType.CONVS_FC_GN:
        dim_in = arch.fpn_dim
        for i in range(1, arch.box_head_num_convs + 1):
            _conv_norm(t, f"head_conv{i}", f"box_head.conv{i}", arch.box_head_conv_dim, dim_in, 3, GN)
            dim_in = arch.box_head_conv_dim
        t.fc("fc6", "box_head.fc6", arch.mlp_head_dim, dim_in * r2, True)
    elif arch.box_head == BoxHeadType.TWO_FC:
        t.fc("fc6", "box_head.fc6", arch.mlp_head_dim, arch.fpn_dim * r2, True)
        t.fc("fc7", "box_head.fc7", arch.mlp_head_dim, arch.mlp_head_dim, True)
    else:
        raise ValueError(f"unknown box head {arch.box_head!r}")
    t.fc("cls_score", "box_predictor.cls_score", arch.num_classes, arch.mlp_head_dim, True)
    t.fc("bbox_pred", "box_predictor.bbox_pred", 4 * arch.num_classes, arch.mlp_head_dim, True)


def _mask_head(t: _Table, arch: Architecture) -> None:
    # The 04_2018 GN head names its convs `_mask_fcn*`; the 12_2017 head `_[mask]_fcn*`.
    gn = arch.mask_head == MaskHeadType.CONVS_GN
    spelling = "_mask_fcn" if gn else "_[mask]_fcn"
    dim_in, dim = arch.fpn_dim, arch.mask_dim
    for i in range(1, 5):
        _conv_norm(t, f"{spelling}{i}", f"mask_head.fcn{i}", dim, dim_in, 3, GN if gn else Norm.NONE)
        dim_in = dim
    # ConvTranspose weights are (in, out, k, k) in both frameworks.
    t.conv("conv5_mask", "mask_head.deconv", dim, dim, 2, True, bias=True)
    t.conv("mask_fcn_logits", "mask_head.logits", arch.num_classes, dim, 1, True, bias=True)


def mapping_rules(arch: Architecture) -> List[Rule]:
    """Every parameter of `arch`, in model order: the reviewable conversion table."""
    t = _Table()
    _body(t, arch, "body")
    if arch.kind == Kind.CLASSIFIER:
        t.fc("pred", "fc", arch.num_classes, arch.stages[-1].out, False)
    elif arch.kind == Kind.MASK_RCNN:
        _fpn(t, arch)
        _rpn(t, arch)
        _box_head(t, arch)
        _mask_head(t, arch)
    else:
        raise ValueError(f"unknown architecture kind {arch.kind!r}")
    return t.rules


def expected_inventory(arch: Architecture) -> List[Tuple[str, Shape, bool]]:
    """(blob name, shape, trainable) of every parameter blob, sorted by name."""
    return sorted((r.blob, r.shape, r.trainable) for r in mapping_rules(arch))


def preserved_inventory(arch: Architecture) -> List[Tuple[str, Shape]]:
    """Blobs a detection checkpoint carries unused from its ImageNet initialisation."""
    if arch.kind != Kind.MASK_RCNN or not arch.pretrained_on_imagenet:
        return []
    res5 = arch.stages[-1].out
    return [("pred_b", (IMAGENET_CLASSES,)), ("pred_w", (IMAGENET_CLASSES, res5))]


# --------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------- #


@dataclass
class MappingResult:
    state_dict: Dict[str, np.ndarray]  # PyTorch parameter name -> float32 array
    dropped: Dict[str, str] = field(default_factory=dict)  # blob name -> why no parameter takes it

    def torch_state_dict(self) -> Dict[str, Any]:
        """The state dict as torch tensors, sharing memory with writable arrays (read-only ones are copied)."""
        import torch

        return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in self.state_dict.items()}


def _listing(names: List[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def _raise_problems(what: str, problems: Dict[str, List[str]], hint: str) -> None:
    parts = [f"{len(v)} {k}: {_listing(v)}" for k, v in problems.items() if v]
    if parts:
        raise MappingError(f"{what}: " + "; ".join(parts) + f"; {hint}")


def _drop_reason(name: str, arch: Architecture, by_blob: Mapping[str, Rule]) -> Optional[str]:
    if name.endswith(MOMENTUM_SUFFIX) and name[: -len(MOMENTUM_SUFFIX)] in by_blob:
        return f"optimizer momentum of {name[: -len(MOMENTUM_SUFFIX)]}"
    if arch.kind == Kind.MASK_RCNN and name in IMAGENET_FC:
        return IMAGENET_FC_REASON
    if arch.kind == Kind.MASK_RCNN and arch.norm == AFFINE and name in MSRA_LEFTOVERS:
        return MSRA_LEFTOVERS[name]
    return TRAINING_COUNTERS.get(name)


def _float32(value: Any) -> Optional[np.ndarray]:
    """Detectron casts every loaded blob to float32; non-float payloads are not weights."""
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        return None
    return np.ascontiguousarray(value, dtype=np.float32)


def detectron_to_torch(blobs: Mapping[str, Any], arch: Architecture) -> MappingResult:
    """Map every blob of a Detectron checkpoint onto `arch`'s parameters, or fail naming them."""
    rules = mapping_rules(arch)
    by_blob = {r.blob: r for r in rules}
    state: Dict[str, np.ndarray] = {}
    dropped: Dict[str, str] = {}
    problems: Dict[str, List[str]] = {"missing": [], "unexpected": [], "mis-shaped": [], "not float arrays": []}
    for name, value in blobs.items():
        rule = by_blob.get(name)
        if rule is None:
            reason = _drop_reason(name, arch, by_blob)
            if reason is None:
                problems["unexpected"].append(name)
                continue
            if name.endswith(MOMENTUM_SUFFIX):
                expected = by_blob[name[: -len(MOMENTUM_SUFFIX)]].shape
                if tuple(np.shape(value)) != expected:
                    problems["mis-shaped"].append(f"{name} {tuple(np.shape(value))} != {expected}")
                    continue
            dropped[name] = reason
            continue
        array = _float32(value)
        if array is None:
            problems["not float arrays"].append(f"{name} ({type(value).__name__})")
        elif array.shape != rule.shape:
            problems["mis-shaped"].append(f"{name} {array.shape} != {rule.shape}")
        else:
            state[rule.param] = array
    problems["missing"] = [r.blob for r in rules if r.blob not in blobs]
    _raise_problems(
        f"checkpoint blobs do not match {describe(arch)}", problems,
        "the file is not this architecture or is damaged; check --config or re-download it",
    )
    return MappingResult(state_dict=state, dropped=dropped)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


def torch_to_detectron(
    state_dict: Mapping[str, Any], arch: Architecture, extra_blobs: Optional[Mapping[str, np.ndarray]] = None
) -> Dict[str, np.ndarray]:
    """The Detectron blob dict of a state dict: inverse of `detectron_to_torch`, bit for bit.

    `extra_blobs` (momentum, the preserved ImageNet fc, counters) are passed through.
    """
    rules = mapping_rules(arch)
    by_param = {r.param: r for r in rules}
    problems: Dict[str, List[str]] = {"missing": [], "unexpected": [], "mis-shaped": [], "clashing": []}
    problems["missing"] = [r.param for r in rules if r.param not in state_dict]
    problems["unexpected"] = [k for k in state_dict if k not in by_param]
    blobs: Dict[str, np.ndarray] = {}
    for rule in rules:
        if rule.param not in state_dict:
            continue
        array = _as_numpy(state_dict[rule.param])
        if array.shape != rule.shape:
            problems["mis-shaped"].append(f"{rule.param} {array.shape} != {rule.shape}")
        blobs[rule.blob] = array
    for name, value in (extra_blobs or {}).items():
        if name in blobs:
            problems["clashing"].append(name)
        blobs[name] = value
    _raise_problems(f"state dict does not match {describe(arch)}", problems,
                    "build the state dict from gnconvert.model.build_network(arch)")
    return blobs


def describe(arch: Architecture) -> str:
    """A short human name, e.g. 'R-50-FPN Mask R-CNN (GN)' or 'R-101 ImageNet classifier (GN)'."""
    norm = "GN" if arch.norm == GN else "frozen BN"
    if arch.kind == Kind.CLASSIFIER:
        return f"R-{arch.depth} ImageNet classifier ({norm})"
    return f"R-{arch.depth}-FPN Mask R-CNN ({norm}, {arch.box_head} box head, {arch.mask_head} mask head)"


def format_table(arch: Architecture) -> str:
    """The table as text, one `blob -> param shape` row per parameter, for review."""
    width = max(len(r.blob) for r in mapping_rules(arch))
    rows = [f"{r.blob:<{width}}  ->  {r.param}  {list(r.shape)}{'' if r.trainable else '  (frozen)'}"
            for r in mapping_rules(arch)]
    return "\n".join([f"# {describe(arch)}: {len(rows)} parameters"] + rows)

