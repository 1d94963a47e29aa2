"""The embedded Detectron cfg: rebuilt without importing anything; other tags refused."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from gnconvert.checkpoint.detectron_cfg import load_config_file, parse_detectron_cfg
from gnconvert.checkpoint.pickle_reader import read_detectron_pickle
from gnconvert.errors import CheckpointError, UsageError

CFG_NAMES = ["e2e_mask_rcnn_R-50-FPN_2x_gn", "e2e_mask_rcnn_R-101-FPN_2x_gn", "scratch_e2e_mask_rcnn_R-50-FPN_3x_gn",
             "e2e_mask_rcnn_R-50-FPN_2x", "e2e_mask_rcnn_R-101-FPN_2x"]


@pytest.mark.parametrize("name", CFG_NAMES)
def test_real_cfg_texts(golden_dir, name):
    text = (golden_dir / "cfg" / f"{name}.yaml").read_text()
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)  # why we need our own loader
    cfg = parse_detectron_cfg(text)
    # Detectron's defaults (core/config.py): BGR means as a (1, 1, 3) float64 array, log(1000/16) clip
    means = cfg["PIXEL_MEANS"]
    assert type(means) is np.ndarray and means.dtype == np.float64 and means.shape == (1, 1, 3)
    assert means.ravel().tolist() == [102.9801, 115.9465, 122.7717]
    assert cfg["BBOX_XFORM_CLIP"] == math.log(1000.0 / 16.0) and cfg["BBOX_XFORM_CLIP"].dtype == np.float64
    assert type(cfg["MODEL"]) is dict and type(cfg["TEST"]["BBOX_AUG"]) is dict
    assert cfg["MODEL"]["NUM_CLASSES"] == 81 and cfg["MODEL"]["MASK_ON"] is True
    assert cfg["MODEL"]["BBOX_REG_WEIGHTS"] == (10.0, 10.0, 5.0, 5.0)
    assert cfg["FPN"]["RPN_ASPECT_RATIOS"] == (0.5, 1, 2)
    assert cfg["TEST"]["SCALE"] == 800 and cfg["TEST"]["MAX_SIZE"] == 1333 and cfg["TEST"]["NMS"] == 0.5
    assert cfg["DOWNLOAD_CACHE"] == "/tmp/detectron-download-cache"  # a !!python/unicode value
    depth = "101" if "101" in name else "50"
    assert cfg["MODEL"]["CONV_BODY"] == f"FPN.add_fpn_ResNet{depth}_conv5_body"
    gn = name.endswith("_gn")
    assert cfg["RESNETS"]["STRIDE_1X1"] is (not gn)
    assert cfg["FPN"]["USE_GN"] is gn
    if gn:
        assert cfg["GROUP_NORM"] == {"DIM_PER_GP": -1, "EPSILON": 1e-05, "NUM_GROUPS": 32}


def test_cfg_embedded_in_real_python2_pickle(golden_dir):
    ckpt = read_detectron_pickle(golden_dir / "py2" / "small_with_cfg.pkl")
    cfg = parse_detectron_cfg(ckpt.cfg_text)
    assert cfg["MODEL"]["TYPE"] == "generalized_rcnn" and cfg["PIXEL_MEANS"].shape == (1, 1, 3)


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "a YAML tag executed code"


@pytest.mark.parametrize("snippet,tag", [
    ("!!python/object/apply:os.system ['touch {c}']", "!!python/object/apply:os.system"),
    ("!!python/object/apply:subprocess.check_call [['touch', '{c}']]", "!!python/object/apply:subprocess.check_call"),
    ("!!python/object/new:os.system ['touch {c}']", "!!python/object/new:os.system"),
    ("!!python/object/apply:builtins.eval [\"open('{c}', 'w')\"]", "!!python/object/apply:builtins.eval"),
    ("!!python/object/apply:builtins.exec [\"open('{c}', 'w')\"]", "!!python/object/apply:builtins.exec"),
    ("!!python/name:os.system ''", "!!python/name:os.system"),
    ("!!python/module:os ''", "!!python/module:os"),
    ("!!python/object:gnconvert.errors.CheckpointError {{}}", "!!python/object:gnconvert.errors.CheckpointError"),
    ("!!python/object/new:detectron.utils.collections.AttrDict2 {{}}", "AttrDict2"),
    ("!!python/object/apply:numpy.load ['{c}']", "!!python/object/apply:numpy.load"),
    ("!!python/object/apply:numpy.testing._private.utils.runstring ['x', {{}}]", "runstring"),
    ("!!python/bytes 'eA=='", "!!python/bytes"),
    ("!custom 1", "!custom"),
])
def test_other_tags_are_refused_by_name(canary, snippet, tag):
    text = "MODEL:\n  TYPE: generalized_rcnn\nEVIL: " + snippet.format(c=canary) + "\n"
    with pytest.raises(CheckpointError, match="refusing YAML tag") as e:
        parse_detectron_cfg(text)
    assert tag in str(e.value) and "line 3" in str(e.value)


def _dtype_yaml(code, endian="<", names="null"):
    return (f"!!python/object/apply:numpy.dtype\n  args: [{code}, 0, 1]\n"
            f"  state: !!python/tuple [3, '{endian}', null, {names}, null, -1, -1, 0]")


def test_numpy_values_are_checked(canary):
    scalar = "X: !!python/object/apply:numpy.core.multiarray.scalar\n- {dt}\n- !!binary AAAAAAAA8D8=\n"
    assert parse_detectron_cfg(scalar.format(dt=_dtype_yaml("f8").replace("\n", "\n  ")))["X"] == 1.0
    with pytest.raises(CheckpointError, match="not a plain numeric type"):
        parse_detectron_cfg(scalar.format(dt=_dtype_yaml("O8").replace("\n", "\n  ")))
    with pytest.raises(CheckpointError, match="structured"):
        parse_detectron_cfg(scalar.format(dt=_dtype_yaml("f8", names="[a]").replace("\n", "\n  ")))
    with pytest.raises(CheckpointError, match="payload does not match"):
        parse_detectron_cfg(scalar.format(dt=_dtype_yaml("f4").replace("\n", "\n  ")))
    array = ("X: !!python/object/apply:numpy.core.multiarray._reconstruct\n"
             "  args: [{name} '', !!python/tuple [0], b]\n"
             "  state: !!python/tuple\n"
             "  - 1\n"
             "  - !!python/tuple [{n}]\n"
             "  - " + _dtype_yaml("f8").replace("\n", "\n    ") + "\n"
             "  - false\n"
             "  - !!binary AAAAAAAA8D8=\n")
    assert parse_detectron_cfg(array.format(name="!!python/name:numpy.ndarray", n=1))["X"].tolist() == [1.0]
    with pytest.raises(CheckpointError, match="does not match its 8-byte payload"):
        parse_detectron_cfg(array.format(name="!!python/name:numpy.ndarray", n=1000000000))
    with pytest.raises(CheckpointError, match="_reconstruct with arguments"):
        parse_detectron_cfg(array.format(name="!!python/unicode", n=1))
    with pytest.raises(CheckpointError, match="refusing YAML tag !!python/name:numpy.ma.MaskedArray"):
        parse_detectron_cfg(array.format(name="!!python/name:numpy.ma.MaskedArray", n=1))


@pytest.mark.parametrize("text,match", [
    ("MODEL: [unclosed\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("[" * 5000 + "]" * 5000, "nested too deeply|not valid YAML"),
])
def test_malformed_text(text, match):
    with pytest.raises(CheckpointError, match=match):
        parse_detectron_cfg(text)


# A partial config in the style of Detectron's configs/04_2018_gn_baselines (written for this test).
PARTIAL_CONFIG = """\
MODEL:
  TYPE: generalized_rcnn
  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
  NUM_CLASSES: 81
  FASTER_RCNN: True
  MASK_ON: True
FPN:
  FPN_ON: True
  USE_GN: True  # GN in the FPN layers
RESNETS:
  STRIDE_1X1: False
  TRANS_FUNC: bottleneck_gn_transformation
TRAIN:
  SCALES: (800,)
  WEIGHTS: https://example.invalid/R-50-GN.pkl
TEST:
  SCALE: 800
  NMS: 0.5
"""


def test_load_config_file(tmp_path):
    path = tmp_path / "e2e.yaml"
    path.write_text(PARTIAL_CONFIG)
    cfg = load_config_file(path)
    assert cfg["MODEL"]["CONV_BODY"] == "FPN.add_fpn_ResNet50_conv5_body"
    assert cfg["FPN"]["USE_GN"] is True and cfg["RESNETS"]["STRIDE_1X1"] is False
    assert cfg["TRAIN"]["SCALES"] == "(800,)"  # Detectron literal_evals such strings when merging
    assert cfg["TEST"] == {"SCALE": 800, "NMS": 0.5}


def test_load_config_file_errors(tmp_path, canary):
    with pytest.raises(UsageError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"MODEL: !!python/object/apply:os.system ['touch {canary}']\n")
    with pytest.raises(CheckpointError, match=f"config file {bad}.*refusing YAML tag"):
        load_config_file(bad)
