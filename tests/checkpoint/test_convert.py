"""mmdetection / ImageNet checkpoints into gcnet_d2's models: layouts, architecture checks,
the converter CLI and COCO class order."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

import gcnet_d2
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.errors import CheckpointMismatchError
from tests.parity import mmdet_reference as ref
from tests.testing import REPO, run_python

needs_mmdet = pytest.mark.skipif(not ref.mmdet_available(), reason=ref.mmdet_unavailable_reason())
R50_GC = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
DCN_CASCADE = (
    "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco.yaml"
)


def model_for(name: str, **overrides) -> torch.nn.Module:
    cfg = gcnet_d2.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def mmdet_r50(tmp_path_factory):
    mm = ref.build_mmdet_model("mask_rcnn_r50_gc_r16", num_classes=3, seed=1)
    path = tmp_path_factory.mktemp("r50") / "mask_rcnn_r50_gc_r16.pth"
    ref.save_mmdet_checkpoint(mm, str(path))
    return mm, path


@needs_mmdet
def test_every_key_lands_on_the_same_tensor(mmdet_r50):
    mm, path = mmdet_r50
    model = model_for(R50_GC)
    GCNetCheckpointer(model).load(str(path))
    ours = model.state_dict()
    theirs = mm.state_dict()
    pairs = {
        "backbone.layer2.3.context_block.channel_add_conv.3.weight":
            "backbone.bottom_up.res3.3.context_block.channel_add_conv.3.weight",
        "backbone.layer1.0.downsample.1.running_var":
            "backbone.bottom_up.res2.0.shortcut.norm.running_var",
        "backbone.bn1.weight": "backbone.bottom_up.stem.conv1.norm.weight",
        "neck.fpn_convs.3.conv.weight": "backbone.fpn_output5.weight",
        "rpn_head.rpn_reg.bias": "proposal_generator.rpn_head.anchor_deltas.bias",
        "roi_head.bbox_head.fc_cls.weight": "roi_heads.box_predictor.cls_score.weight",
        "roi_head.mask_head.upsample.weight": "roi_heads.mask_head.deconv.weight",
    }  # fmt: skip
    for mm_key, d2_key in pairs.items():
        assert torch.equal(ours[d2_key], theirs[mm_key]), (mm_key, d2_key)


@needs_mmdet
def test_wrong_depth_names_what_the_checkpoint_holds(mmdet_r50):
    _, path = mmdet_r50
    model = model_for("gcnet/mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco.yaml")
    with pytest.raises(CheckpointMismatchError) as e:
        GCNetCheckpointer(model).load(str(path))
    msg = str(e.value)
    assert "ResNet-50" in msg and "ResNet-101" in msg and "depth" in msg
    assert "configs/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml" in msg


@needs_mmdet
def test_wrong_ratio_and_missing_gc_are_reported(mmdet_r50):
    _, path = mmdet_r50
    with pytest.raises(CheckpointMismatchError, match="gc_ratio"):
        GCNetCheckpointer(model_for("gcnet/mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco.yaml")).load(
            str(path)
        )
    plain = model_for("gcnet/mask_rcnn_r50_fpn_syncbn-backbone_1x_coco.yaml")
    with pytest.raises(CheckpointMismatchError, match="gc_stages"):
        GCNetCheckpointer(plain).load(str(path))


@pytest.mark.slow
@needs_mmdet
def test_old_dcn_generation_without_mask_head(tmp_path):
    """A file of mmdetection's older layout: a 50-layer DCN + GC Cascade R-CNN without mask
    head, with the old ``conv2_offset`` key names (the reference builds ResNeXt-50 32x4d at
    depth 50)."""
    mm = ref.build_mmdet_model("cascade_mask_rcnn_x101_dcn_gc_r16", num_classes=3, depth=50)
    sd = {
        k.replace("conv2.conv_offset", "conv2_offset"): v
        for k, v in mm.state_dict().items()
        if not k.startswith("roi_head.mask_head")
    }
    path = tmp_path / "old.pth"
    torch.save({"state_dict": sd, "meta": {}}, path)
    with pytest.raises(CheckpointMismatchError) as e:
        GCNetCheckpointer(model_for(DCN_CASCADE)).load(str(path))
    msg = str(e.value)
    assert "Cascade R-CNN, ResNeXt-50 32x4d, DCN c3-c5, GC r16 c3-c5" in msg
    assert "MODEL.RESNETS.DEPTH 50" in msg and "MODEL.MASK_ON False" in msg
    # the overrides the message proposes build a model that loads it, old key names included
    fitting = model_for(
        DCN_CASCADE,
        **{"MODEL.RESNETS.DEPTH": 50, "MODEL.MASK_ON": False},
    )  # fmt: skip
    GCNetCheckpointer(fitting).load(str(path))
    got = fitting.backbone.bottom_up.res4[5].conv2.conv_offset.weight
    assert torch.equal(got, sd["backbone.layer3.5.conv2_offset.weight"])


CONVERTER = REPO / "tools" / "convert-mmdet-to-d2.py"


def converter():  # noqa: ANN201
    """tools/convert-mmdet-to-d2.py as a module (its ``main(argv)`` returns the exit status)."""
    spec = importlib.util.spec_from_file_location("convert_mmdet_to_d2", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mmdet
def test_converter_cli_writes_a_plain_detectron2_checkpoint(mmdet_r50, tmp_path, capsys):
    _, path = mmdet_r50
    dst = tmp_path / "out" / "converted.pth"
    status = converter().main([str(path), str(dst)])
    out, err = capsys.readouterr()
    assert status == 0, err[-2000:]
    assert "GC blocks" in out and "dropped" in out
    model = model_for(R50_GC)
    state = torch.load(dst, weights_only=True)["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and [k for k in missing if not k.startswith("pixel_")] == []
    assert [p.name for p in dst.parent.iterdir()] == ["converted.pth"]  # no temp file left


@pytest.mark.slow
def test_converter_cli_rejects_a_non_checkpoint(tmp_path):
    """The script itself (a child process): exit status 2, one line naming the file."""
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    dst = tmp_path / "dst.pth"
    proc = run_python([str(CONVERTER), str(bad), str(dst)])
    assert proc.returncode == 2 and "notes.pth" in proc.stderr
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not dst.exists()


def test_torchvision_imagenet_backbone_loads_with_a_report(tmp_path, caplog):
    tv = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    model = model_for(R50_GC)
    caplog.set_level("INFO")
    GCNetCheckpointer(model).load(str(path))
    assert "newly initialised" in caplog.text and "GC blocks" in caplog.text
    assert "dropped (ImageNet classifier" in caplog.text
    assert "context_block" not in caplog.text  # no per-key "missing" noise
    bottom_up = model.backbone.bottom_up
    assert torch.equal(bottom_up.res4[2].conv2.weight, tv.layer3[2].conv2.weight)
    assert torch.equal(bottom_up.stem.conv1.norm.running_mean, tv.bn1.running_mean)
    block = bottom_up.res3[0].context_block  # newly initialised: still the identity
    assert torch.count_nonzero(block.channel_add_conv[3].weight) == 0


def test_mmdet_coco_class_order_is_detectron2s():
    """mmdet's COCO classes (index i = i-th sorted category id) are coco_2017_val's order."""
    if not ref.mmdet_available():
        pytest.skip(ref.mmdet_unavailable_reason())
    from mmdet.datasets import CocoDataset

    assert (
        list(CocoDataset.METAINFO["classes"]) == MetadataCatalog.get("coco_2017_val").thing_classes
    )
