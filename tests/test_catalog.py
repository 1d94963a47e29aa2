"""The catalog against the facts on Detectron's GN project page and MODEL_ZOO.md (transcribed here), not against itself."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gnconvert.errors import UsageError
from gnconvert.zoo import catalog
from gnconvert.zoo.catalog import NoDownloadError

MODEL = "output/train/coco_2014_train%3Acoco_2014_valminusminival/generalized_rcnn/model_final.pkl"
BOXES = "output/test/coco_2014_minival/generalized_rcnn/bbox_coco_2014_minival_results.json"
MASKS = "output/test/coco_2014_minival/generalized_rcnn/segmentations_coco_2014_minival_results.json"

# id: (box AP, mask AP, depth, GN?, schedule, download prefix or None) -- as the GN page prints them
MASK_RCNN = {
    "35859007": (38.6, 34.5, 50, False, "2x",
                 "35859007/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_2x.yaml.01_49_07.By8nQcCH"),
    "35861858": (40.9, 36.4, 101, False, "2x",
                 "35861858/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml.02_32_51.SgT4y1cO"),
    "48616381": (40.3, 35.7, 50, True, "2x",
                 "GN/48616381/04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn_0416.13_23_38.bTlTI97Q"),
    "48616724": (41.8, 36.8, 101, True, "2x",
                 "GN/48616724/04_2018_gn_baselines/e2e_mask_rcnn_R-101-FPN_2x_gn_0416.13_26_34.GLnri4GR"),
    "48734751": (40.8, 36.1, 50, True, "3x",
                 "GN/48734751/04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_3x_gn_0417.09_54_59.nwCTtPVk"),
    "48734779": (42.3, 37.2, 101, True, "3x",
                 "GN/48734779/04_2018_gn_baselines/e2e_mask_rcnn_R-101-FPN_3x_gn_0417.09_55_23.HMtcR8wg"),
    "56421872": (39.5, 35.2, 50, True, "3x", None),
    "56421911": (41.0, 36.4, 101, True, "3x", None),
    "49025460": (36.2, 32.5, 50, True, "3x", None),
    "49024951": (37.5, 33.3, 101, True, "3x", None),
}
CLASSIFIERS = {
    "47261647": (24.0, 50, "ImageNetPretrained/47261647/R-50-GN.pkl"),
    "47592356": (22.6, 101, "ImageNetPretrained/47592356/R-101-GN.pkl"),
}


def test_catalog_holds_exactly_the_gn_page_models():
    assert {e.id for e in catalog.load_catalog()} == set(MASK_RCNN) | set(CLASSIFIERS)


@pytest.mark.parametrize("model_id", sorted(MASK_RCNN))
def test_mask_rcnn_entry_matches_published_table(model_id):
    box, mask, depth, gn, schedule, prefix = MASK_RCNN[model_id]
    e = catalog.get(model_id)
    assert e.kind == "mask_rcnn"
    assert e.published == {"box_ap": box, "mask_ap": mask}
    assert (e.depth, e.lr_schedule) == (depth, schedule)
    assert e.norm == ("GN" if gn else "AffineChannel")
    assert e.box_head == ("4conv1fc_gn" if gn else "2fc")
    assert e.mask_head == ("4conv_gn" if gn else "4conv")
    assert f"R-{depth}-FPN" in e.name and ("GN" in e.name) == gn
    if prefix is None:
        assert e.files == {}
    else:
        assert e.files == {"model": f"{prefix}/{MODEL}", "boxes": f"{prefix}/{BOXES}",
                           "masks": f"{prefix}/{MASKS}"}
    # every training/inference statistic is printed for these rows
    assert e.im_per_gpu == 2
    assert all(isinstance(v, float) and v > 0 for v in (e.train_mem_gb, e.train_s_per_iter, e.train_hours))
    gpu, cpu = (float(x) for x in e.inference_s_per_im.split("+"))
    assert 0 < gpu < 1 and 0 < cpu < 1
    assert e.max_iter == {"2x": 180000, "3x": 270000}[schedule]


def test_a_few_statistics_read_off_the_table():
    # spot checks typed from projects/GN/README.md by hand
    r50 = catalog.get("48616381")
    assert (r50.train_mem_gb, r50.train_s_per_iter, r50.train_hours, r50.inference_s_per_im) == \
        (10.5, 1.017, 50.8, "0.146 + 0.017")
    bn = catalog.get("35861858")
    assert (bn.train_mem_gb, bn.train_s_per_iter, bn.train_hours, bn.inference_s_per_im) == \
        (10.2, 0.993, 49.7, "0.126 + 0.017")
    assert catalog.get("49024951").superseded and not catalog.get("56421911").superseded


@pytest.mark.parametrize("model_id", sorted(CLASSIFIERS))
def test_classifier_entries(model_id):
    err, depth, path = CLASSIFIERS[model_id]
    e = catalog.get(model_id)
    assert e.kind == "classifier" and e.depth == depth and e.norm == "GN"
    assert e.published["top1_error"] == err
    assert e.files == {"model": path}
    assert e.train_mem_gb is None and e.box_head is None and e.lr_schedule is None


def test_base_url_and_sources_are_recorded():
    cat = catalog.load_catalog()
    assert cat.base_url == "https://dl.fbaipublicfiles.com/detectron"
    raw = json.loads(catalog.catalog_path().read_text())
    assert "projects/GN/README.md" in raw["source"]["gn_project"]
    assert "MODEL_ZOO.md" in raw["source"]["model_zoo"]
    assert all(m["source"] for m in raw["models"])


def test_unknown_id_suggests_the_nearest():
    with pytest.raises(UsageError) as info:
        catalog.get("48616382")
    msg = str(info.value)
    assert "48616382" in msg and "48616381" in msg and "\n" not in msg
    assert not isinstance(info.value, NoDownloadError)


def test_unknown_name_like_input_gets_a_suggestion():
    with pytest.raises(UsageError, match="did you mean"):
        catalog.get("R-50-FPN, GN 3x")


def test_no_published_download_is_its_own_error_and_shows_the_ap():
    entry = catalog.get("56421872")  # listed: get() works
    with pytest.raises(NoDownloadError) as info:
        entry.file("model")
    msg = str(info.value)
    assert "no published download" in msg and "39.5" in msg and "35.2" in msg


def test_missing_file_kind_is_a_usage_error():
    with pytest.raises(UsageError, match="no 'masks' file"):
        catalog.get("47261647").file("masks")


def test_catalog_paths_are_relative():
    for e in catalog.load_catalog():
        for rel in e.files.values():
            assert not rel.startswith("/") and ".." not in rel.split("/")


def test_list_command_prints_every_id_without_importing_torch(tmp_path):
    env = {"GNCONVERT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = ("import sys; from gnconvert.cli import main\n"
            "try:\n    main(['list'])\nexcept SystemExit as e:\n"
            "    assert 'torch' not in sys.modules, 'list imported torch'; raise")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "MODEL", "SCHD"]
    for model_id in list(MASK_RCNN) + list(CLASSIFIERS):
        assert any(line.startswith(model_id) for line in lines)
    row = next(line for line in lines if line.startswith("48734779"))
    assert "42.3" in row and "37.2" in row and "3x" in row


def test_list_json(tmp_path):
    env = {"GNCONVERT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "gnconvert", "list", "--json"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert rows["48616724"]["published"] == {"box_ap": 41.8, "mask_ap": 36.8}
    assert rows["48616724"]["cached"] == {"model": None, "boxes": None, "masks": None}
    assert rows["56421911"]["files"] == {}


def test_every_entry_names_an_architecture_the_model_builder_knows():
    """The catalog spells kind/norm/heads as architecture.record does, and every (kind, depth, norm,
    heads) it lists is one of the reference architectures, so a fetched model always builds."""
    from gnconvert.architecture import REFERENCE_ARCHITECTURES, BoxHeadType, Kind, MaskHeadType, Norm

    built = {(a.kind, a.depth, a.norm) for a in REFERENCE_ARCHITECTURES.values() if a.kind == Kind.CLASSIFIER}
    built |= {(a.kind, a.depth, a.norm, a.box_head, a.mask_head) for a in REFERENCE_ARCHITECTURES.values()
              if a.kind == Kind.MASK_RCNN}
    for e in catalog.load_catalog():
        assert e.kind in {k.value for k in Kind} and e.norm in {n.value for n in Norm}, e.id
        if e.kind == Kind.CLASSIFIER:
            assert e.box_head is None and e.mask_head is None, e.id
            assert (Kind(e.kind), e.depth, Norm(e.norm)) in built, e.id
        else:
            key = (Kind(e.kind), e.depth, Norm(e.norm), BoxHeadType(e.box_head), MaskHeadType(e.mask_head))
            assert key in built, e.id
