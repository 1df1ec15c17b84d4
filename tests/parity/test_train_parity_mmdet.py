"""Training-step parity with mmdetection 3.3's own training code.

mmdetection's model is built from its own config file (``tests/parity/mmdet_reference.py``),
given realistic random weights, saved as an mmdetection checkpoint and loaded into our model
of the same table row (``configs/gcnet/*``, the ``MODEL.MMDET_TRAIN`` components on) through
our checkpointer. Both run one training forward / backward on the same normalised, padded batch
and ground truth, in float64, with sampling made deterministic (``torch.randperm`` -> ``arange``
on both sides: both samplers then take the first candidates). Every loss, every trainable
parameter's gradient and the set of trainable parameters must agree.

The batch exercises what the components change: two images of different sizes (anchors in
the smaller one's batch padding), a ~12 px box (below the 0.3-IoU reach of the smallest
anchors), two overlapping boxes, boxes touching the border (one at the bottom-right of the
smaller image, where mmdetection 3.x's batch-padded GT bitmaps matter: our side runs
``MODEL.MMDET_TRAIN.MASK_PAD: batch``, 3.x's rule) and a concave polygon mask.

Detectron2 casts boxes (``Boxes``), box decoding and NMS inputs to float32 whatever the
model's dtype: in float32 a proposal moving by 1e-6 can flip a ReLU in the box head, so our
side runs them in float64 here (patched below), as mmdetection does. mmdetection's box
*targets* stay float32 (``bbox2delta`` casts): ~1e-7 relative, inside the tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.proposal_generator import proposal_utils
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.structures.masks import polygons_to_bitmask
from detectron2.utils.events import EventStorage

import gcnet_d2
from gcnet_d2.checkpoint import GCNetCheckpointer
from gcnet_d2.checkpoint.mmdet_layout import rename_key
from tests.parity import mmdet_reference as ref
from tests.testing import narrow

pytestmark = [
    pytest.mark.skipif(not ref.mmdet_available(), reason=ref.mmdet_unavailable_reason()),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# kind -> (our table row, backbone depth on both sides: X-101 rows run as X-50 for CPU time).
# Both sides are narrowed to the same small widths (tests.testing.TINY: every layer, GC block,
# DCN and head kept, fewer channels), which the equalities below do not depend on.
CASES = {
    "mask_rcnn_r50_gc_r16": ("gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml", None),
    "mask_rcnn_r50_syncbn_gc_r16": (
        "gcnet/mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml",
        None,
    ),
    "cascade_mask_rcnn_x101_gc_r4": (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.yaml",
        50,
    ),
    "cascade_mask_rcnn_x101_dcn_gc_r16": (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco.yaml",
        50,
    ),
}
NUM_CLASSES = 3
SIZES = ((128, 160), (96, 128))  # (h, w); the second image lies in the first one's padding
PAD = (128, 160)
# RPN proposals per image in training, on both sides (mmdetection's rpn_proposal nms_pre per
# level and max_per_img; our PRE_NMS_TOPK_TRAIN and POST_NMS_TOPK_TRAIN): fewer than the
# recipe's 2000 / 1000-2000, the same selection rules. Every equality holds for any count.
NMS_PRE, PROPOSALS = 1000, 300
# RoI budgets (per image, positive fraction): "sampled" is below the candidate count (~300
# proposals + GT), so the sampler chooses, as the recipe's (512, 0.25) does among its
# 1000-2000 proposals; "all" (4096, 0.5) is above every candidate count, so the sample is
# every candidate and the candidates' order does not matter. Every row runs both.
BUDGETS = {"sampled": (48, 0.25), "all": (4096, 0.5)}
RUNS = [(kind, budget) for kind in CASES for budget in BUDGETS]


# --------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------
def _rect(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


# per image: (box, class, polygon); boxes are the polygons' bounding boxes
GT = (
    [
        ([40.0, 30.0, 52.0, 42.0], 0, _rect(40, 30, 52, 42)),  # ~12 px
        # concave "U"
        (
            [60.0, 40.0, 120.0, 100.0],
            1,
            [60, 40, 76, 40, 76, 84, 104, 84, 104, 40, 120, 40, 120, 100, 60, 100],
        ),
        ([84.0, 56.0, 140.0, 116.0], 2, _rect(84, 56, 140, 116)),  # overlaps the "U"
        ([0.0, 70.0, 44.0, 128.0], 1, _rect(0, 70, 44, 128)),  # touches left and bottom
    ],
    [
        ([20.0, 16.0, 70.0, 80.0], 2, _rect(20, 16, 70, 80)),
        ([64.0, 24.0, 110.0, 70.0], 0, _rect(64, 24, 110, 70)),
        # touches the right and bottom edges of an image whose size is a multiple of 32, in
        # the first image's padding: mmdetection 3.x pads its bitmap to the batch shape
        ([96.0, 64.0, 128.0, 96.0], 1, _rect(96, 64, 128, 96)),
    ],
)


def make_batch() -> tuple[torch.Tensor, list[Instances], list[np.ndarray]]:
    """Normalised float64 images padded to PAD, our GT Instances, and the image-size masks."""
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(ref.MMDET_PIXEL_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(ref.MMDET_PIXEL_STD, dtype=torch.float64).view(3, 1, 1)
    images = torch.zeros(len(SIZES), 3, *PAD, dtype=torch.float64)
    targets, masks = [], []
    for i, ((h, w), gts) in enumerate(zip(SIZES, GT, strict=True)):
        img = torch.randint(0, 256, (3, h // 8, w // 8), generator=g).double()
        img = torch.nn.functional.interpolate(img[None], size=(h, w), mode="nearest")[0]
        for box, cls, _ in gts:  # flat, class-coloured objects on a blocky background
            x1, y1, x2, y2 = (int(v) for v in box)
            img[:, y1:y2, x1:x2] = torch.tensor([60.0, 120.0, 200.0]).roll(cls)[:, None, None]
        images[i, :, :h, :w] = (img - mean) / std
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([b for b, _, _ in gts], dtype=torch.float64))
        inst.gt_classes = torch.tensor([c for _, c, _ in gts])
        bitmaps = np.stack([polygons_to_bitmask([np.array(p, float)], h, w) for *_, p in gts])
        inst.gt_masks = BitMasks(torch.from_numpy(bitmaps))
        targets.append(inst)
        masks.append(bitmaps)
    return images, targets, masks


def mmdet_samples(targets: list[Instances], masks: list[np.ndarray]) -> list:
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    samples = []
    for inst, bitmaps in zip(targets, masks, strict=True):
        h, w = inst.image_size
        pad = (-(-h // 32) * 32, -(-w // 32) * 32)
        s = DetDataSample(
            metainfo=dict(
                img_shape=(h, w),
                ori_shape=(h, w),
                pad_shape=pad,
                batch_input_shape=PAD,
                scale_factor=(1.0, 1.0),
            )
        )
        s.gt_instances = InstanceData(
            bboxes=inst.gt_boxes.tensor.clone(),
            labels=inst.gt_classes.clone(),
            masks=BitmapMasks(bitmaps.astype(np.uint8), h, w),
        )
        samples.append(s)
    return samples


# --------------------------------------------------------------------------------------------
# float64 and determinism on both sides
# --------------------------------------------------------------------------------------------
def _boxes_init(self: Boxes, tensor: torch.Tensor) -> None:
    tensor = torch.as_tensor(tensor)
    if not tensor.is_floating_point():
        tensor = tensor.float()
    self.tensor = tensor.reshape(-1, 4)


def _apply_deltas(self: Box2BoxTransform, deltas: torch.Tensor, boxes: torch.Tensor):
    """Box2BoxTransform.apply_deltas in the deltas' dtype (the original casts to float32)."""
    boxes = boxes.to(deltas.dtype)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    wx, wy, ww, wh = self.weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
    pcx, pcy = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
    pw, ph = torch.exp(dw) * w[:, None], torch.exp(dh) * h[:, None]
    out = torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph), dim=2)
    return out.reshape(deltas.shape)


@pytest.fixture
def float64_deterministic(monkeypatch):
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n, device=kw.get("device")))
    monkeypatch.setattr(Boxes, "__init__", _boxes_init)
    monkeypatch.setattr(Box2BoxTransform, "apply_deltas", _apply_deltas)
    # detectron2's batched_nms casts boxes to float32 ("fp16 range"); torchvision's does not
    monkeypatch.setattr(proposal_utils, "batched_nms", torchvision.ops.boxes.batched_nms)


# --------------------------------------------------------------------------------------------
# the two models
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(request, tmp_path_factory):
    kind = request.param
    row, depth = CASES[kind]
    proposals = {"rpn_proposal": {"nms_pre": NMS_PRE, "max_per_img": PROPOSALS}}
    mm = ref.build_mmdet_model(
        kind, num_classes=NUM_CLASSES, seed=0, depth=depth, tiny=True, train_cfg=proposals
    )
    with torch.no_grad():  # an RPN that puts proposals on the objects
        mm.rpn_head.rpn_cls.weight.mul_(0.3)
        mm.rpn_head.rpn_cls.bias.mul_(0.3)
    path = tmp_path_factory.mktemp(kind) / f"{kind}.pth"
    ref.save_mmdet_checkpoint(mm, str(path))
    cfg = gcnet_d2.get_config(row)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.MMDET_TRAIN.MASK_PAD = "batch"  # mmdetection 3.x (2.x pads per image)
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = NMS_PRE, PROPOSALS
    narrow(cfg, depth)
    ours = build_model(cfg)
    GCNetCheckpointer(ours).load(str(path))
    ref.to_float64_(mm).train()
    return kind, mm, ours.double().train()


def _set_budget(kind: str, mm, ours, budget: tuple[int, float]) -> None:  # noqa: ANN001
    num, fraction = budget
    samplers = mm.roi_head.bbox_sampler
    for s in samplers if isinstance(samplers, list | torch.nn.ModuleList) else [samplers]:
        s.num, s.pos_fraction = num, fraction
    ours.roi_heads.batch_size_per_image = num
    ours.roi_heads.positive_fraction = fraction


def _mmdet_losses(mm, images, samples) -> dict[str, torch.Tensor]:  # noqa: ANN001
    mm.zero_grad()
    mm.data_preprocessor.pad_gt_masks(samples)
    raw = mm.loss(images, samples)
    losses = {}
    for name, value in raw.items():
        if "loss" not in name:
            continue
        value = sum(value) if isinstance(value, list | tuple) else value
        stage, _, base = name.rpartition(".")
        ours = {
            "loss_rpn_cls": "loss_rpn_cls",
            "loss_rpn_bbox": "loss_rpn_loc",
            "loss_cls": "loss_cls",
            "loss_bbox": "loss_box_reg",
            "loss_mask": "loss_mask",
        }[base]
        losses[ours + (f"_stage{stage[1:]}" if stage else "")] = value
    sum(losses.values()).backward()
    return losses


def _our_losses(ours, images, targets) -> tuple[dict[str, torch.Tensor], list[tuple]]:  # noqa: ANN001
    """Our losses (gradients accumulated) and, per RoI head stage, the mean number of
    positive and negative RoIs sampled per image."""
    ours.zero_grad()
    features = ours.backbone(images)
    from detectron2.structures import ImageList

    image_list = ImageList(images, [t.image_size for t in targets])
    with EventStorage() as storage:
        proposals, losses = ours.proposal_generator(image_list, features, targets)
        _, detector_losses = ours.roi_heads(image_list, features, proposals, targets)
    samples = [storage.history(f"roi_head/num_{kind}_samples").values() for kind in ("fg", "bg")]
    losses.update(detector_losses)
    sum(losses.values()).backward()
    return losses, [(fg, bg) for (fg, _), (bg, _) in zip(*samples, strict=True)]


def _gradients(model, rename) -> dict[str, torch.Tensor | None]:  # noqa: ANN001
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[rename(name)] = None if p.grad is None else p.grad.detach().flatten().clone()
    return out


def _mmdet_name(name: str) -> str:
    new, _ = rename_key(name, backbone_only=False)
    assert new is not None, f"no detectron2 name for mmdet parameter {name}"
    return new


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.slow
@pytest.mark.parametrize(("models", "budget"), RUNS, indirect=["models"])
def test_one_training_step_matches_mmdetection(models, budget, float64_deterministic):
    kind, mm, ours = models
    _set_budget(kind, mm, ours, BUDGETS[budget])
    images, targets, masks = make_batch()
    expected = _mmdet_losses(mm, images, mmdet_samples(targets, masks))
    got, samples = _our_losses(ours, images, targets)
    print(kind, budget, "RoIs sampled per image and stage (positive, negative)", samples)
    num, _ = BUDGETS[budget]
    if budget == "sampled":  # more candidates than the budget: the sampler chose
        assert samples and all(fg + bg == num for fg, bg in samples), samples
    else:  # every candidate, fewer than the budget
        assert samples and all(fg + bg < num for fg, bg in samples), samples

    assert sorted(got) == sorted(expected)
    worst = {k: abs(float(got[k]) / float(expected[k]) - 1.0) for k in expected}
    print(kind, budget, "losses", {k: f"{v:.1e}" for k, v in worst.items()})
    bad = {k: (float(got[k]), float(expected[k])) for k, v in worst.items() if v > 1e-6}
    assert not bad, f"losses differ (ours, mmdet): {bad}"

    g_ref = _gradients(mm, _mmdet_name)
    g_ours = _gradients(ours, lambda n: n)
    assert sorted(g_ours) == sorted(g_ref), "trainable parameter sets differ"
    rel = {}
    for name, g in g_ref.items():
        assert (g is None) == (g_ours[name] is None), name
        if g is None:
            continue
        if name.endswith("context_block.conv_mask.bias"):
            # The attention logits' bias cancels in the softmax: its true gradient is 0 and
            # both sides hold rounding noise. Pin that instead of a ratio of noises.
            scale = float(g_ref[name.replace(".bias", ".weight")].norm())
            assert max(float(g.norm()), float(g_ours[name].norm())) <= 1e-9 * scale, name
            continue
        rel[name] = _rel(g_ours[name], g)
    worst_grad = max(rel, key=rel.get)
    print(kind, budget, "worst gradient", worst_grad, f"{rel[worst_grad]:.1e}")
    bad = {n: f"{r:.2e}" for n, r in rel.items() if r > 1e-5}
    assert not bad, f"{len(bad)} gradients differ (relative L2): {dict(list(bad.items())[:8])}"


def test_head_init_matches_mmdetection():
    """Layers trained from scratch start from mmdetection's distributions (its own
    ``init_weights`` on the model of its config file): same std and range per layer."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    torch.manual_seed(0)
    from mmengine.config import ConfigDict

    mm = MODELS.build(ConfigDict(ref.mmdet_model_cfg("mask_rcnn_r50_gc_r16", num_classes=80)))
    mm.init_weights()
    cfg = gcnet_d2.get_config(CASES["mask_rcnn_r50_gc_r16"][0])
    cfg.MODEL.DEVICE = "cpu"
    ours = dict(build_model(cfg).named_parameters())
    compared = 0
    for name, p in mm.named_parameters():
        if name.startswith("backbone.") or p.dim() < 2:
            continue  # backbone: ImageNet weights; biases: zero on both sides (checked below)
        mine = ours[_mmdet_name(name)]
        assert float(mine.std()) == pytest.approx(float(p.std()), rel=0.05), name
        assert float(mine.abs().max()) <= 1.5 * float(p.abs().max()), name
        bias = ours[_mmdet_name(name).replace(".weight", ".bias")]
        assert not bias.any(), name
        compared += 1
    assert compared >= 15  # FPN 8, RPN 3, box head 4, mask head 6
