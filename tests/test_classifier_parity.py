"""ImageNet GN ResNets: our converted classifier reproduces Detectron's logits and res5.

Golden: `classifier/ImageNet_R-*-GN_seed1.npz`, Detectron's body + global average
pool + `pred` fc run by Caffe2 on the seed-1 stand-in weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gnconvert.architecture import REFERENCE_ARCHITECTURES
from gnconvert.checkpoint.name_mapping import detectron_to_torch
from gnconvert.fidelity.seeded import seeded_blobs
from gnconvert.model import MaskRCNNNetwork, ResNetClassifier, build_network

# float32 noise between Caffe2's and PyTorch's CPU kernels (summation order)
RTOL = 1e-4


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("depth", [50, 101])
def test_classifier_matches_detectron(golden_dir, depth):
    name = f"ImageNet_R-{depth}-GN"
    arch = REFERENCE_ARCHITECTURES[name]
    net = build_network(arch).eval()
    assert isinstance(net, ResNetClassifier)
    net.load_state_dict(detectron_to_torch(seeded_blobs(arch, seed=1), arch).torch_state_dict(), strict=True)
    golden = np.load(golden_dir / "classifier" / f"{name}_seed1.npz")
    with torch.no_grad():
        x = torch.from_numpy(golden["data"])
        logits = net(x).numpy()
        res5 = net.body(x)[3][:, :8].numpy()
    pred_err, res5_err = _relative_error(logits, golden["pred"]), _relative_error(res5, golden["res5"])
    print(f"{name}: pred max abs {np.abs(logits - golden['pred']).max():.2e} rel {pred_err:.2e}; "
          f"res5 max abs {np.abs(res5 - golden['res5']).max():.2e} rel {res5_err:.2e}")
    assert pred_err < RTOL and res5_err < RTOL
    # the decisions agree too: the same top-5 classes per image
    top5 = lambda a: np.argsort(-a, axis=1)[:, :5]  # noqa: E731
    assert np.array_equal(top5(logits), top5(golden["pred"]))


@pytest.mark.parametrize("depth", [50, 101])
def test_imagenet_weights_fill_the_detector_body(depth):
    """Detectron trained the GN detectors from these backbones: same body keys and shapes."""
    classifier = REFERENCE_ARCHITECTURES[f"ImageNet_R-{depth}-GN"]
    detector = REFERENCE_ARCHITECTURES[f"e2e_mask_rcnn_R-{depth}-FPN_2x_gn"]
    state = detectron_to_torch(seeded_blobs(classifier, seed=1), classifier).state_dict
    body = {k: v.shape for k, v in state.items() if k.startswith("body.")}
    assert set(state) - set(body) == {"fc.weight", "fc.bias"}
    with torch.device("meta"):
        net = MaskRCNNNetwork(detector)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("body.")}
    assert body == expected
    net = MaskRCNNNetwork(detector)
    missing, unexpected = net.body.load_state_dict(
        {k[len("body."):]: torch.from_numpy(v.copy()) for k, v in state.items() if k in body}, strict=True)
    assert not missing and not unexpected
