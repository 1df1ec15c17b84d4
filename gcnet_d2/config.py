"""``add_gcnet_config``: the config keys gcnet_d2 adds to a detectron2 config."""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_gcnet_config(cfg: CN) -> CN:
    """Add gcnet_d2's keys (``MODEL.GCNET``) to ``cfg`` in place and return it.

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
    # Inference options (gcnet_d2.modeling.inference_options). FOLD_NORMS: fold frozen norms
    # into their convs at inference (exact up to float rounding; training, tracing and export
    # see the plain conv + norm). COMPILE: "" (eager) or a torch.compile backend name
    # ("inductor", "aot_eager", ...) for the backbone; check its output on your device first.
    cfg.MODEL.GCNET.FOLD_NORMS = True
    cfg.MODEL.GCNET.COMPILE = ""

    # mmdetection parity outside the backbone (used by the table configs):
    # per-stage loss weights of MMDetCascadeROIHeads (mmdet stage_loss_weights).
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0, 0.5, 0.25]
    # Image resizing of gcnet_d2's dataset mapper: "cv2" = cv2.INTER_LINEAR as mmdetection
    # (what the released checkpoints saw), "pil" = detectron2's default PIL bilinear.
    cfg.INPUT.RESIZE_BACKEND = "cv2"

    # Dataset robustness (gcnet_d2.data.robust).
    cfg.GCNET_DATA = CN()
    # True: training skips images that are missing, unreadable, undecodable or whose size
    # disagrees with their annotation, logging each with its reason and counting them.
    # False: such an image stops training with an error naming the file. Evaluation never skips.
    cfg.GCNET_DATA.SKIP_BAD_IMAGES = False
    return cfg
