"""Is a port's output Detectron's?  Matching, per-stage comparison, a report, a verdict.

The criteria are the golden README's "how close is close": at least 99% of
Detectron's detections matched by one of ours with the same class, box IoU >= 0.99
and |score difference| <= 1e-3; no more than 1% of ours unmatched; mask IoU
>= 0.97 for every matched pair.  Intermediates before any decision (the input
blob, the FPN maps) must agree within float32 noise; after a decision (top-k,
NMS) a near-tie may legitimately reorder or swap members, so proposal and RoI
sets are compared by matching boxes, and per-RoI outputs on the matched RoIs.

When a free run misses those criteria, `noise_floor` measures whether the miss is
float noise rather than a port error: it perturbs our FPN maps by exactly the
amount they are measured to differ from Detectron's (per level, Gaussian with
std = the largest elementwise difference on the golden crop), reruns everything
downstream, and asks how far our own answer moves.  A run "passes within the
noise floor" when Detectron differs from us no more than we differ from
ourselves under that noise.  The per-stage, teacher-forced checks (each stage fed
Detectron's own input) stay exact either way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from pycocotools import mask as mask_util

from gnconvert.results.detections import Detections

MIN_MATCHED = 0.99
MAX_EXTRA = 0.01
BOX_IOU = 0.99
SCORE_TOL = 1e-3
MASK_IOU = 0.97
MAP_REL_TOL = 2e-4  # float32 noise on a feature map, relative to its largest magnitude (seen: <= 6e-5)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU with Detectron's "+1" sides, so sub-pixel and zero-width boxes
    (which these seeded models produce) still compare; sides below zero count as 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    wa = np.clip(a[:, 2] - a[:, 0] + 1, 0, None)
    ha = np.clip(a[:, 3] - a[:, 1] + 1, 0, None)
    wb = np.clip(b[:, 2] - b[:, 0] + 1, 0, None)
    hb = np.clip(b[:, 3] - b[:, 1] + 1, 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1, 0, None)
    inter = iw * ih
    union = (wa * ha)[:, None] + (wb * hb)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    # identical degenerate boxes (no "+1" area at all) still match each other
    same = np.all(np.abs(a[:, None, :] - b[None, :, :]) <= 1e-3, axis=2)
    return np.where(same, 1.0, iou)


def _rle_bytes(rle: dict) -> dict:
    c = rle["counts"]
    return dict(rle, counts=c.encode("ascii") if isinstance(c, str) else c)


def mask_iou(a: dict, b: dict) -> float:
    """IoU of two RLEs; two empty masks agree (1.0)."""
    ra, rb = _rle_bytes(a), _rle_bytes(b)
    union = mask_util.area(mask_util.merge([ra, rb], intersect=False))
    if union == 0:
        return 1.0
    return float(mask_util.iou([ra], [rb], [0])[0, 0])


@dataclass
class DetectionMatch:
    pairs: List[Tuple[int, int]]  # (reference index, our index)
    num_reference: int
    num_ours: int
    worst_box_iou: float = 1.0
    worst_score_diff: float = 0.0
    worst_mask_iou: Optional[float] = None

    @property
    def matched_fraction(self) -> float:
        return len(self.pairs) / self.num_reference if self.num_reference else 1.0

    @property
    def extra(self) -> int:
        return self.num_ours - len(self.pairs)

    @property
    def extra_fraction(self) -> float:
        return self.extra / max(self.num_reference, 1) if self.num_ours else 0.0

    @property
    def passed(self) -> bool:
        masks_ok = self.worst_mask_iou is None or self.worst_mask_iou >= MASK_IOU
        return self.matched_fraction >= MIN_MATCHED and self.extra_fraction <= MAX_EXTRA and masks_ok


def match_detections(
    reference: Detections, ours: Detections, masks: bool = True, min_iou: float = BOX_IOU, score_tol: float = SCORE_TOL
) -> DetectionMatch:
    """Greedy one-to-one matching, best box IoU first: same class, IoU >= min_iou,
    |score difference| <= score_tol (the README's criteria by default)."""
    nr, no = len(reference), len(ours)
    result = DetectionMatch(pairs=[], num_reference=nr, num_ours=no)
    if nr == 0 or no == 0:
        return result
    iou = box_iou(reference.boxes, ours.boxes)
    ok = (
        (reference.classes[:, None] == ours.classes[None, :])
        & (iou >= min_iou)
        & (np.abs(reference.scores[:, None].astype(np.float64) - ours.scores[None, :]) <= score_tol)
    )
    cand = np.argwhere(ok)
    # best IoU, then closest score first; ties by reference order
    key = [(-iou[i, j], abs(float(reference.scores[i]) - float(ours.scores[j])), i, j) for i, j in cand]
    used_r, used_o = set(), set()
    for _, _, i, j in sorted(key):
        if i in used_r or j in used_o:
            continue
        used_r.add(i)
        used_o.add(j)
        result.pairs.append((int(i), int(j)))
    result.pairs.sort()
    if result.pairs:
        result.worst_box_iou = float(min(iou[i, j] for i, j in result.pairs))
        result.worst_score_diff = float(
            max(abs(float(reference.scores[i]) - float(ours.scores[j])) for i, j in result.pairs)
        )
        if masks and reference.masks_rle and ours.masks_rle:
            result.worst_mask_iou = min(mask_iou(reference.masks_rle[i], ours.masks_rle[j]) for i, j in result.pairs)
    return result


# --------------------------------------------------------------------------- stages
@dataclass
class StageResult:
    name: str
    passed: bool
    detail: str
    decision: bool = False  # a top-k/NMS decision sits before it: reported, not judged by exact values


def _rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    err = float(np.abs(ours.astype(np.float64) - ref).max()) if ref.size else 0.0
    return err / scale if scale > 0 else err


def _compare_map(name: str, ours, ref, tol: float = MAP_REL_TOL) -> StageResult:
    if ours is None:
        return StageResult(name, False, "missing from our run")
    if ours.shape != ref.shape:
        return StageResult(name, False, f"shape {ours.shape} != reference {ref.shape}")
    if ours.dtype.kind in "iu":
        same = bool(np.array_equal(ours, ref))
        return StageResult(name, same, "identical" if same else f"{ours.tolist()} != {ref.tolist()}")
    rel = _rel_error(ours, ref)
    return StageResult(name, rel <= tol, f"max error {rel:.2e} of max |value| (tol {tol:.0e})")


def _match_boxes(ours: np.ndarray, ref: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each reference box the index of our best-IoU box (-1 when IoU < BOX_IOU), one-to-one."""
    if len(ref) == 0 or len(ours) == 0:
        return np.full(len(ref), -1), np.zeros(len(ref))
    iou = box_iou(ref, ours)
    best = np.full(len(ref), -1)
    best_iou = np.zeros(len(ref))
    taken = np.zeros(len(ours), bool)
    for i in range(len(ref)):
        row = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= BOX_IOU:
            best[i], best_iou[i] = j, row[j]
            taken[j] = True
    return best, best_iou


def _compare_box_set(name: str, ours, ref) -> StageResult:
    if ours is None:
        return StageResult(name, False, "missing from our run", decision=True)
    best, _ = _match_boxes(ours[:, 1:5], ref[:, 1:5])
    frac = float((best >= 0).mean()) if len(ref) else 1.0
    return StageResult(
        name, frac >= MIN_MATCHED, f"{len(ours)} vs {len(ref)} boxes, {100 * frac:.2f}% of reference matched (IoU >= {BOX_IOU})",
        decision=True,
    )


def compare_stages(ours: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> List[StageResult]:
    """Per-stage comparison of intermediates named as in the golden npz files."""
    out: List[StageResult] = []
    for key in ("im_info", "data_shape", "data_crop"):
        if key in ref:
            out.append(_compare_map(key, ours.get(key), ref[key]))
    levels = sorted({int(k[1]) for k in ref if k.startswith("p") and k.endswith("_shape")})
    for k in levels:
        for part in ("shape", "channel_mean", "crop"):
            key = f"p{k}_{part}"
            out.append(_compare_map(key, ours.get(key), ref[key]))
    rpn_levels = sorted(int(k[len("rpn_rois_fpn"):]) for k in ref if k.startswith("rpn_rois_fpn"))
    for k in rpn_levels:
        out.append(_compare_box_set(f"rpn_rois_fpn{k}", ours.get(f"rpn_rois_fpn{k}"), ref[f"rpn_rois_fpn{k}"]))
    if "rois" in ref:
        out.append(_compare_box_set("rois", ours.get("rois"), ref["rois"]))
        if "rois" in ours:
            best, _ = _match_boxes(ours["rois"][:, 1:5], ref["rois"][:, 1:5])
            hit = best >= 0
            for key in ("cls_prob", "bbox_pred"):
                if key in ref and key in ours and hit.any():
                    rel = _rel_error(ours[key][best[hit]], ref[key][hit])
                    out.append(StageResult(key, rel <= 1e-2, f"on {int(hit.sum())} matched RoIs: max error {rel:.2e} of max |value|", decision=True))
    return out


def compare_masks(ours_probs: np.ndarray, ref_probs: np.ndarray, match: DetectionMatch) -> Optional[StageResult]:
    if ours_probs is None or not match.pairs:
        return None
    r = np.array([i for i, _ in match.pairs])
    o = np.array([j for _, j in match.pairs])
    err = float(np.abs(ours_probs[o].astype(np.float64) - ref_probs[r]).max())
    return StageResult("mask_probs", err <= 1e-2, f"on {len(r)} matched detections: max abs error {err:.2e}", decision=True)


# --------------------------------------------------------------------------- stage runs
class StageRun:
    """One image through a `Detector`, stage by stage, keeping what Detectron's golden files
    hold under the same names (im_info, data_shape, data_crop, pK_shape/_channel_mean/_crop,
    rpn_rois_fpnK, rpn_roi_probs_fpnK, rois, cls_prob, bbox_pred, mask_rois, mask_probs).

    Any later stage can be fed Detectron's own input instead of ours (`rois=`, `boxes=`),
    so each stage is judged on its own.
    """

    def __init__(self, detector, image):
        import torch

        from gnconvert.inference.detector import exact_fp32
        from gnconvert.inference.preprocess import load_image

        self.detector = detector
        im = torch.from_numpy(load_image(image)).to(detector.device)
        self.image_size = (int(im.shape[0]), int(im.shape[1]))
        with torch.no_grad(), exact_fp32():
            self.data, self.im_info, self.scale = detector.input_blob(im)
            feats, logits, deltas = detector.features(self.data)
        self._set_features(feats, logits, deltas)

    def with_features(self, feats) -> "StageRun":
        """The same image with other FPN maps (the noise floor's perturbed ones); the RPN head reruns."""
        import copy

        import torch

        from gnconvert.inference.detector import exact_fp32

        other = copy.copy(self)
        with torch.no_grad(), exact_fp32():
            logits, deltas = self.detector.network.rpn_head(feats)
        other._set_features(feats, logits, deltas)
        return other

    def _set_features(self, feats, logits, deltas) -> None:
        self.feats = feats
        self.logits = [x[0] for x in logits]
        self.deltas = [x[0] for x in deltas]
        first = self.detector.rpn_min_level
        self.intermediates: Dict[str, np.ndarray] = {
            "im_info": _np(self.im_info).reshape(1, 3),
            "data_shape": np.array(self.data.shape, dtype=np.int64),
            "data_crop": _np(self.data[0, :, :32, :32]),
        }
        for k, f in enumerate(self.feats, start=first):
            self.intermediates[f"p{k}_shape"] = np.array(f.shape, dtype=np.int64)
            self.intermediates[f"p{k}_channel_mean"] = _np(f[0].mean(dim=(1, 2)))
            self.intermediates[f"p{k}_crop"] = _np(f[0, :8, :16, :16])

    def boxes(self, rois: Optional[np.ndarray] = None) -> Detections:
        """Proposals, box head and box results (no masks); `rois` (R, 5) replaces our RoIs."""
        import torch

        from gnconvert.inference.detector import exact_fp32

        det, inter = self.detector, self.intermediates
        with torch.no_grad(), exact_fp32():
            padded = (int(self.data.shape[2]), int(self.data.shape[3]))
            level_boxes, level_scores = det.proposals(self.logits, self.deltas, self.im_info, padded)
            for k, (b, p) in enumerate(zip(level_boxes, level_scores), start=det.rpn_min_level):
                inter[f"rpn_rois_fpn{k}"] = _with_batch_column(b)
                inter[f"rpn_roi_probs_fpn{k}"] = _np(p).reshape(-1, 1)
            ours = det.collect(level_boxes, level_scores)
            if rois is not None:
                ours = torch.as_tensor(np.asarray(rois, np.float32)[:, 1:5], device=ours.device)
            cls_prob, bbox_pred = det.box_head(self.feats, ours)
            boxes, scores, classes = det.box_results(ours, cls_prob, bbox_pred, self.scale, *self.image_size)
        inter["rois"] = _with_batch_column(ours)
        inter["cls_prob"] = _np(cls_prob)
        inter["bbox_pred"] = _np(bbox_pred)
        return Detections(boxes=_np(boxes).reshape(-1, 4), scores=_np(scores), classes=_np(classes),
                          image_size=self.image_size)

    def masks(self, detections: Detections) -> Detections:
        """Mask head and paste for these final boxes (ours, or Detectron's): a copy with RLE masks."""
        import dataclasses

        import torch

        from gnconvert.inference import rle
        from gnconvert.inference.detector import exact_fp32
        from gnconvert.inference.mask_postprocess import mask_rois

        det = self.detector
        with torch.no_grad(), exact_fp32():
            boxes = torch.as_tensor(np.asarray(detections.boxes, np.float32), device=det.device).reshape(-1, 4)
            classes = torch.as_tensor(np.asarray(detections.classes, np.int64), device=det.device)
            probs = det.mask_head(self.feats, boxes, classes, self.scale)
            crops, starts = det.paste(probs, boxes, *self.image_size)
        self.intermediates["mask_rois"] = _with_batch_column(mask_rois(boxes, self.scale))
        self.intermediates["mask_probs"] = _np(probs)
        return dataclasses.replace(
            detections, mask_probs=_np(probs),
            masks_rle=rle.encode([_np(c) for c in crops], _np(starts), self.image_size), masks=None, timings={})

    def detections(self) -> Detections:
        """The free run: our own input to every stage."""
        return self.masks(self.boxes())


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _with_batch_column(boxes) -> np.ndarray:
    b = _np(boxes).astype(np.float32).reshape(-1, 4)
    return np.hstack([np.zeros((b.shape[0], 1), np.float32), b])


# --------------------------------------------------------------------------- noise floor
@dataclass
class NoiseFloor:
    """How much our own detections move when the FPN maps move by Detectron's measured distance."""

    sigmas: List[float]  # per FPN level: std of the added noise
    self_matches: List[DetectionMatch]  # our run vs each perturbed run, README criteria
    detectron_union: float  # share of Detectron's detections matched by our run or any perturbed run

    @property
    def unmatched(self) -> float:
        return max([1.0 - MIN_MATCHED] + [1.0 - m.matched_fraction for m in self.self_matches])

    @property
    def extra(self) -> float:
        return max([MAX_EXTRA] + [m.extra_fraction for m in self.self_matches])

    @property
    def mask_iou(self) -> float:
        return min([MASK_IOU] + [m.worst_mask_iou for m in self.self_matches if m.worst_mask_iou is not None])

    def explains(self, match: DetectionMatch) -> bool:
        """Detectron differs from us no more than we differ from ourselves under the noise."""
        masks_ok = match.worst_mask_iou is None or match.worst_mask_iou >= self.mask_iou
        return (1.0 - match.matched_fraction <= self.unmatched + 1e-12
                and match.extra_fraction <= self.extra + 1e-12 and masks_ok)

    def format(self) -> str:
        kept = ", ".join(f"{100 * m.matched_fraction:.0f}%" for m in self.self_matches)
        return (f"noise floor: FPN maps perturbed by Detectron's measured distance (std per level "
                f"{' '.join(f'{s:.1e}' for s in self.sigmas)}): our run keeps {kept} of its detections; "
                f"allows {100 * self.unmatched:.0f}% unmatched, {100 * self.extra:.0f}% extra, mask IoU >= {self.mask_iou:.3f}; "
                f"{100 * self.detectron_union:.0f}% of Detectron's detections appear in some noisy run")


def measured_fpn_distance(feats, reference_intermediates: Dict[str, np.ndarray], first_level: int = 2) -> Optional[List[float]]:
    """Per level, the largest |ours - Detectron| over the golden crop (`pK_crop` = P[0, :8, :16, :16])."""
    sigmas = []
    for k, f in enumerate(feats, start=first_level):
        ref = reference_intermediates.get(f"p{k}_crop")
        if ref is None:
            return None
        c, h, w = ref.shape
        ours = f[0, :c, :h, :w].detach().cpu().numpy()
        sigmas.append(float(np.abs(ours.astype(np.float64) - ref).max()))
    return sigmas


def noise_floor(run: StageRun, reference, ours: Detections, runs: int = 4, seed: int = 0) -> Optional[NoiseFloor]:
    """Rerun RPN and heads `runs` times on FPN maps + N(0, sigma_level^2) noise (see module doc).
    None when the reference has no FPN crops to measure the distance on."""
    import torch

    sigmas = measured_fpn_distance(run.feats, reference.intermediates, run.detector.rpn_min_level)
    if sigmas is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    matches, hit = [], np.zeros(len(reference.detections), bool)
    for i, _ in match_detections(reference.detections, ours, masks=False).pairs:
        hit[i] = True
    for _ in range(runs):
        feats = [f + s * torch.randn(f.shape, generator=gen).to(f.device, f.dtype) for f, s in zip(run.feats, sigmas)]
        noisy = run.with_features(feats).detections()
        matches.append(match_detections(ours, noisy))
        for i, _ in match_detections(reference.detections, noisy, masks=False).pairs:
            hit[i] = True
    union = float(hit.mean()) if len(hit) else 1.0
    return NoiseFloor(sigmas=sigmas, self_matches=matches, detectron_union=union)


# --------------------------------------------------------------------------- report
@dataclass
class ParityReport:
    tag: str
    image: str
    match: DetectionMatch
    stages: List[StageResult] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    reference_seconds: Optional[float] = None
    noise: Optional[NoiseFloor] = None  # measured only when the README criteria are missed

    @property
    def strict(self) -> bool:
        """The golden README's criteria, as written."""
        return self.match.passed

    @property
    def passed(self) -> bool:
        # detections decide; a pre-decision stage out of float noise fails too
        detections_ok = self.match.passed or (self.noise is not None and self.noise.explains(self.match))
        return detections_ok and all(s.passed for s in self.stages if not s.decision)

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAIL"
        return "PASS" if self.strict else "PASS within float32 noise floor (README criteria missed by noise alone)"

    def format(self) -> str:
        m = self.match
        lines = [f"== {self.tag} / {self.image}: {self.verdict}"]
        lines.append(
            f"  detections: {len(m.pairs)}/{m.num_reference} of Detectron's matched ({100 * m.matched_fraction:.1f}%, need >= {100 * MIN_MATCHED:.0f}%), "
            f"{m.extra} extra of {m.num_ours} ({100 * m.extra_fraction:.1f}%, max {100 * MAX_EXTRA:.0f}%)"
        )
        mask = "n/a" if m.worst_mask_iou is None else f"{m.worst_mask_iou:.4f}"
        lines.append(
            f"  worst matched: box IoU {m.worst_box_iou:.5f} (>= {BOX_IOU}), score diff {m.worst_score_diff:.2e} (<= {SCORE_TOL:.0e}), mask IoU {mask} (>= {MASK_IOU})"
        )
        if self.noise is not None:
            lines.append("  " + self.noise.format())
        for s in self.stages:
            flag = "ok " if s.passed else ("~  " if s.decision else "BAD")
            lines.append(f"  [{flag}] {s.name:22s} {s.detail}")
        if self.timings:
            total = sum(self.timings.values())
            parts = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
            ref = f" (Detectron CPU {self.reference_seconds:.1f}s)" if self.reference_seconds else ""
            lines.append(f"  time: {total:.2f}s{ref}: {parts}")
        return "\n".join(lines)


def compare(reference, ours: Detections, intermediates: Optional[Dict[str, np.ndarray]] = None) -> ParityReport:
    """Full report for one image: `reference` is a `golden_format.GoldenImage`."""
    match = match_detections(reference.detections, ours)
    report = ParityReport(
        tag=reference.tag, image=reference.image, match=match, timings=dict(ours.timings),
        reference_seconds=reference.detectron_cpu_seconds,
    )
    if intermediates is not None and reference.intermediates:
        report.stages = compare_stages(intermediates, reference.intermediates)
        if "mask_probs" in reference.intermediates:
            s = compare_masks(intermediates.get("mask_probs"), reference.intermediates["mask_probs"], match)
            if s is not None:
                report.stages.append(s)
    return report


def check_image(detector, reference, image, noise_runs: int = 4) -> ParityReport:
    """Run `detector` on `image` stage by stage and judge it against `reference` (a
    golden_format.GoldenImage): the README's criteria, and the noise floor only when those are missed."""
    t0 = time.perf_counter()
    run = StageRun(detector, image)
    ours = run.detections()
    ours.timings = {"predict": time.perf_counter() - t0}
    report = compare(reference, ours, run.intermediates)
    if not report.strict and noise_runs > 0 and reference.intermediates:
        report.noise = noise_floor(run, reference, ours, runs=noise_runs)
    return report
