"""COCO evaluation of a converted model: the machinery behind `gnconvert verify`.

A "predictor" is anything with `predict_batch(list of BGR uint8 arrays) -> list of
gnconvert.detections.Detections` (the inference Detector is one).
"""
from gnconvert.evaluation.coco_eval import METRICS, CocoEvaluator, evaluate, load_annotations
from gnconvert.evaluation.coco_layout import CocoLayout, find_layout
from gnconvert.evaluation.run import VerifyConfig, run_verify
from gnconvert.results.coco_results import detectron_order, from_results, to_results

__all__ = ["METRICS", "CocoEvaluator", "evaluate", "load_annotations", "CocoLayout", "find_layout",
           "detectron_order", "from_results", "to_results", "run_verify", "VerifyConfig"]
