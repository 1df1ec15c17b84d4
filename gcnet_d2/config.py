"""``add_gcnet_config``: the config keys gcnet_d2 adds to a detectron2 config."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

#: The speed-up switches that were ``MODEL.GCNET`` keys before they got a node of their own:
#: a config setting one stops with one line naming its new key.
MOVED_KEYS = {
    "MODEL.GCNET.FOLD_NORMS": "FAST.FOLD_FROZEN_NORMS",
    "MODEL.GCNET.CONV1X1_GEMM": "FAST.CONV1X1_GEMM",
    "MODEL.GCNET.PARALLEL_ROI_ALIGN": "FAST.PARALLEL_ROI_ALIGN",
    "MODEL.GCNET.LEAN_FPN": "FAST.LEAN_FPN",
    "MODEL.GCNET.COMPILE": "FAST.COMPILE",
}


def moved_key_message(old: str) -> str:
    """The one line a config that sets the moved key ``old`` stops with (yacs' wording)."""
    return f"Key {old} was renamed to {MOVED_KEYS[old]}; please update your config."


def add_gcnet_config(cfg: CN) -> CN:
    """Add gcnet_d2's keys (``MODEL.GCNET``, ``FAST`` and the others below) to ``cfg`` in place
    and return it.

    Deformable convs use detectron2's own ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` and
    ``DEFORM_NUM_GROUPS``. ``MODEL.RESNETS.NORM`` also accepts ``"FrozenStatsBN"``. Values are
    validated when the model is built, with errors that name the key.
    """
    cfg.MODEL.GCNET = CN()
    # Per stage (res2, res3, res4, res5): whether every bottleneck of the stage applies a
    # global context block after conv3 + norm, before the residual add. "c3-c5" in the
    # GCNet table is [False, True, True, True].
    cfg.MODEL.GCNET.STAGES_ON = [False, False, False, False]
    # Bottleneck ratio of the context transform: hidden width = int(channels * RATIO).
    # "r16" = 1/16, "r4" = 1/4. Must be in (0, 1].
    cfg.MODEL.GCNET.RATIO = 1.0 / 16
    # Context pooling: "att" (softmax attention over H*W, the paper's default) or "avg".
    cfg.MODEL.GCNET.POOLING = "att"
    # How the context joins the features: any of "channel_add", "channel_mul".
    cfg.MODEL.GCNET.FUSION = ["channel_add"]

    # Exact speed-ups of any detectron2 model (not only GC ones), read by
    # gcnet_d2.fast.apply(model, cfg): train_net.py, the predictor and the export tool call it;
    # a model from build_model alone is the plain model. Each governs what its name says.
    # (A LazyConfig sets the same switches in a top-level `fast` dict, lower-case names.)
    cfg.FAST = CN()
    # FOLD_FROZEN_NORMS: (1) a norm that is a fixed per-channel affine (FrozenBN, FrozenStatsBN,
    # or BN / SyncBN in eval mode) folded into the weight and bias of the conv it follows, in
    # eval mode (one conv instead of conv + norm); (2) in each GC bottleneck, conv3 + its
    # fixed-affine norm + the GC block as one matrix product (eager CPU inference, and eager
    # training where conv3's norm is frozen; traced, exported and compiled models run the
    # plain bottleneck). BN in training mode is never folded. Exact up to float rounding
    # (gcnet_d2.fast.norm_fold, gcnet_d2.fast.gc_fold).
    cfg.FAST.FOLD_FROZEN_NORMS = True
    # CONV1X1_GEMM: 1x1 convs on large CPU maps (backbone, FPN laterals, the mask predictor)
    # as one matrix product at inference (oneDNN's layout reorders cost more there; ~1e-6
    # relative; gcnet_d2.fast.conv1x1_gemm).
    cfg.FAST.CONV1X1_GEMM = True
    # PARALLEL_ROI_ALIGN: every ROIPooler spreads the boxes of each RoIAlign call over the CPU
    # threads in eager mode (torchvision's CPU kernels use one): inference output bit for
    # bit; in training also the backward pass, whose gradient is the serial one up to float
    # rounding (gcnet_d2.fast.roi_align).
    cfg.FAST.PARALLEL_ROI_ALIGN = True
    # LEAN_FPN: FPN inference frees each bottom-up map after its lateral conv and adds the
    # top-down term in place (bit-identical, lower peak memory; gcnet_d2.fast.lean_fpn).
    cfg.FAST.LEAN_FPN = True
    # COMPILE: "" (eager) or a torch.compile backend name ("inductor", "aot_eager", ...) for
    # the backbone; check its output on your device first (benchmarks/compile_check.py).
    cfg.FAST.COMPILE = ""
    # CHANNELS_LAST: convolution weights on the CPU in channels-last memory order, so oneDNN
    # convolves CPU maps without reordering them (its bfloat16 / AMX kernels need that
    # order); values and state dicts unchanged (gcnet_d2.fast.channels_last).
    cfg.FAST.CHANNELS_LAST = True
    renamed = cfg.__dict__[CN.RENAMED_KEYS]  # merge_from_file / merge_from_list refuse these
    for old, new in MOVED_KEYS.items():
        renamed[old] = new

    # mmdetection parity outside the backbone (used by the table configs):
    # per-stage loss weights of MMDetCascadeROIHeads (mmdet stage_loss_weights).
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0, 0.5, 0.25]
    # mmdetection's training recipe, one switch per component; False / "detectron2"
    # is Detectron2's stock behaviour. The table's Base-*.yaml turn them on. Budgets stay with
    # the standard keys (MODEL.RPN / MODEL.ROI_HEADS BATCH_SIZE_PER_IMAGE, POSITIVE_FRACTION).
    cfg.MODEL.MMDET_TRAIN = CN()
    # RPN (needs MODEL.PROPOSAL_GENERATOR.NAME "MMDetRPN"): mmdetection's MaxIoUAssigner, whose
    # low-quality matches take a GT's best anchors only at IoU >= RPN_MIN_POS_IOU and assign
    # them to that GT (later GTs win ties); Detectron2's Matcher takes them at any IoU.
    cfg.MODEL.MMDET_TRAIN.RPN_MAX_IOU_ASSIGNER = False
    cfg.MODEL.MMDET_TRAIN.RPN_MIN_POS_IOU = 0.3
    # RPN: anchors centred outside an image's own pad shape (its size rounded up to
    # PAD_SIZE_DIVISOR) and, when MODEL.RPN.BOUNDARY_THRESH >= 0, anchors crossing the image
    # border by more than it are removed *before* matching (mmdetection's valid / inside
    # flags). False: every anchor is matched; BOUNDARY_THRESH ignores anchors after matching.
    cfg.MODEL.MMDET_TRAIN.RPN_VALID_ANCHORS = False
    cfg.MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR = 32
    # RoI heads ("MMDetROIHeads" / "MMDetCascadeROIHeads"): proposals matched with the
    # MaxIoUAssigner rule (low-quality matches when ROI_LOW_QUALITY_MATCHES, at IoU >=
    # ROI_MIN_POS_IOU), then the GTs *prepended* as positives of their own GT, then
    # subsampled. False: Detectron2's Matcher, GTs appended.
    cfg.MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER = False
    cfg.MODEL.MMDET_TRAIN.ROI_LOW_QUALITY_MATCHES = True
    cfg.MODEL.MMDET_TRAIN.ROI_MIN_POS_IOU = 0.5
    # Cascade stages 2 and 3 (needs ROI_MAX_IOU_ASSIGNER): the refined boxes of the previous
    # stage's sample minus its GT rows are matched at the stage's IoU, get the GTs prepended
    # again and are re-sampled with the ROI_HEADS budget. False: Detectron2 relabels all
    # refined boxes, no GTs added, no re-sampling.
    cfg.MODEL.MMDET_TRAIN.CASCADE_RESAMPLE = False
    # Initialisation of the heads trained from scratch: "mmdet" = xavier_uniform on the FPN
    # convs and the box head FCs, kaiming_normal (fan_out) on the mask logits; "detectron2" =
    # c2_xavier_fill and normal(0.001). "mmdet" needs the recipe's backbone builder
    # (MODEL.BACKBONE.NAME "build_gcnet_resnet_mmdet_fpn_backbone") and RoI heads.
    cfg.MODEL.MMDET_TRAIN.HEAD_INIT = "detectron2"
    # Bitmap mask targets (INPUT.MASK_RASTER "mmdet") are cut by RoIAlign from a GT bitmap;
    # its zero padding decides the samples at the bitmap's bottom / right edge. "image": padded
    # per image to PAD_SIZE_DIVISOR (mmdetection 2.x's Pad, which trained the released
    # checkpoints); "batch": padded to the batch's padded shape (mmdetection 3.x's
    # DetDataPreprocessor(pad_mask=True)). Needs gcnet_d2's RoI heads for "batch".
    cfg.MODEL.MMDET_TRAIN.MASK_PAD = "image"

    # Image resizing of gcnet_d2's dataset mapper: "cv2" = cv2.INTER_LINEAR as mmdetection
    # (what the released checkpoints saw), "pil" = detectron2's default PIL bilinear.
    cfg.INPUT.RESIZE_BACKEND = "cv2"
    # Instance masks of the training mapper (gcnet_d2.data.mapper): "detectron2" = detectron2's
    # (polygons transformed, then rasterised per RoI or at the image size); "mmdet" = polygons
    # rasterised at the original image size, resized (nearest) and flipped with the image,
    # zero-padded to MODEL.MMDET_TRAIN.PAD_SIZE_DIVISOR, the RoI targets cut from that bitmap
    # by RoIAlign, as mmdetection (needs INPUT.MASK_FORMAT "bitmask" and
    # INPUT.RESIZE_BACKEND "cv2").
    cfg.INPUT.MASK_RASTER = "detectron2"

    # Inference precision (gcnet_d2.precision, docs/precision.md): "fp32", or "bf16" = the
    # detector under bfloat16 autocast with its score / box / mask outputs, RoIAlign, the GC
    # attention and the DCN in float32; boxes, scores and masks come out float32. Read by
    # evaluation (train_net.py, --eval-only included), GCNetPredictor and demo/demo.py. On a
    # CPU without bfloat16 instructions: one warning, float32.
    cfg.TEST.PRECISION = "fp32"

    # Dataset robustness (gcnet_d2.data.validation, gcnet_d2.data.loaders).
    cfg.GCNET_DATA = CN()
    # True: training skips images that are missing, unreadable, undecodable or whose size
    # disagrees with their annotation, logging each with its reason and counting them.
    # False: such an image stops training with an error naming the file. Evaluation never skips.
    cfg.GCNET_DATA.SKIP_BAD_IMAGES = False
    # Which training images and annotations are used (gcnet_d2.data.filtering): "detectron2"
    # (DATALOADER.FILTER_EMPTY_ANNOTATIONS drops images without a non-crowd annotation) or
    # "mmdet" (mmdetection's CocoDataset: keeps crowd-only images as images without ground
    # truth, drops images under 32 px and boxes with w < 1 or h < 1;
    # DATALOADER.FILTER_EMPTY_ANNOTATIONS then drops only images without any annotation).
    cfg.GCNET_DATA.FILTER = "detectron2"
    return cfg


#: Overrides that turn the table configs' training components into Detectron2's stock ones
#: (docs/training.md "Component by component": each key off is Detectron2's behaviour).
DETECTRON2_TRAINING_COMPONENTS = {
    "MODEL.PROPOSAL_GENERATOR.NAME": "RPN",
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.MMDET_TRAIN.RPN_MAX_IOU_ASSIGNER": False,
    "MODEL.MMDET_TRAIN.RPN_VALID_ANCHORS": False,
    "MODEL.MMDET_TRAIN.ROI_MAX_IOU_ASSIGNER": False,
    "MODEL.MMDET_TRAIN.HEAD_INIT": "detectron2",
    "INPUT.MASK_FORMAT": "polygon",
    "INPUT.MASK_RASTER": "detectron2",
}
