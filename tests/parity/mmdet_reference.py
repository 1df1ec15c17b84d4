"""mmdetection reference models for the numerical parity tests (test support, not a test).

Why one file over ~450 lines: it is one concept, "the mmdetection side", imported by every
parity test: the ``mmcv._ext`` stand-in (forward and backward kernels), the builders from
mmdetection's own config files and the checkpoint writer change together.

mmdet 3.3 / mmengine 0.10.7 / mmcv-lite 2.1.0 (see ``requirements-parity.txt``) are used as
the *reference* implementation. mmcv-lite ships the Python side of ``mmcv.ops`` but not the
compiled extension ``mmcv._ext``, which every ``mmcv.ops`` module loads at import time (and
``import mmdet.models`` imports ``mmcv.ops``). So the only thing that is really missing is
``mmcv._ext``: :func:`install_mmcv_op_stubs` registers a stand-in for it whose three kernels
that the GCNet models use at inference time are implemented on torchvision:

* ``nms``                 -> ``torchvision.ops.nms`` (same greedy loop, IoU and ``>`` test as
                             mmcv's ``nms_cpu``; mmcv's own score sort is kept so ties break the
                             same way);
* ``roi_align_forward``   -> ``torchvision.ops.roi_align`` (avg mode; both are the Caffe2/
                             Detectron2 kernel: ``aligned`` shifts by -0.5, ``sampling_ratio<=0``
                             is adaptive ``ceil(roi_size / output_size)``);
* ``deform_conv_forward`` -> ``torchvision.ops.deform_conv2d`` (DCN v1; the offset layout is the
                             same: per deformable group, ``[dy, dx]`` pairs in kernel raster order,
                             out-of-image samples read 0);
* ``roi_align_backward``, ``deform_conv_backward_input`` / ``_parameters`` -> the same
                             torchvision kernels' autograd backward (for training-step parity).

mmcv's real Python wrappers on top (``RoIAlign``, ``DeformConv2dPack`` registered as ``'DCN'``,
``nms``/``batched_nms`` with their offset trick and ``split_thr``) stay in use, so the module
attributes and state_dict keys (``conv2.weight``, ``conv2.conv_offset.weight|bias``) are mmcv's
own. Every other ``mmcv._ext`` kernel raises ``NotImplementedError`` when *called*.

The reference models are built from mmdetection's own config files (:data:`CONFIG_FILES`).
Nothing here imports mmdet at module import time: tests call :func:`mmdet_available` and skip
(only where mmdet is not installed and ``CI`` is not set).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

MMDET_PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB
MMDET_PIXEL_STD = (58.395, 57.12, 57.375)  # RGB

KINDS = (
    "mask_rcnn_r50_gc_r16",
    "cascade_mask_rcnn_x101_gc_r4",
    "cascade_mask_rcnn_x101_dcn_gc_r16",
)

_STUB_FLAG = "__gcnet_d2_torchvision_stub__"
_UNAVAILABLE_REASON: str | None = None
_AVAILABLE: bool | None = None


# --------------------------------------------------------------------------------------------
# mmcv._ext stand-in
# --------------------------------------------------------------------------------------------
def _ext_nms(bboxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """mmcv ``nms_cpu``: indices of kept boxes, in descending score order."""
    import torchvision

    if bboxes.numel() == 0:
        return bboxes.new_zeros(0, dtype=torch.long)
    # mmcv sorts with scores.sort(0, descending=True); keep that exact order (incl. ties) and
    # give torchvision strictly decreasing ranks so it walks the boxes in the same order.
    order = scores.sort(0, descending=True)[1]
    boxes = bboxes[order].clone()
    if offset:  # legacy "+1" box convention: w = x2 - x1 + offset
        boxes[:, 2:4] += offset
    ranks = -torch.arange(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    keep = torchvision.ops.nms(boxes, ranks, float(iou_threshold))
    return order[keep]


def _ext_roi_align_forward(
    input: Tensor,  # mmcv's keyword names
    rois: Tensor,
    output: Tensor,
    argmax_y: Tensor,
    argmax_x: Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    import torchvision

    if pool_mode != 1:
        raise NotImplementedError("torchvision stub of mmcv roi_align supports pool_mode='avg'")
    out = torchvision.ops.roi_align(
        input,
        rois.to(input.dtype),
        (int(aligned_height), int(aligned_width)),
        spatial_scale=float(spatial_scale),
        sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned),
    )
    output.copy_(out)


def _ext_deform_conv_forward(
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    output: Tensor,
    columns: Tensor,
    ones: Tensor,
    kW: int,  # noqa: N803 - mmcv's keyword names
    kH: int,  # noqa: N803
    dW: int,  # noqa: N803
    dH: int,  # noqa: N803
    padW: int,  # noqa: N803
    padH: int,  # noqa: N803
    dilationW: int,  # noqa: N803
    dilationH: int,  # noqa: N803
    group: int,
    deformable_group: int,
    im2col_step: int,
) -> None:
    import torchvision

    assert weight.shape[2:] == (kH, kW)
    assert input.shape[1] == weight.shape[1] * group, "groups mismatch"
    assert offset.shape[1] == deformable_group * 2 * kH * kW, "deform_groups mismatch"
    out = torchvision.ops.deform_conv2d(
        input,
        offset,
        weight,
        None,
        stride=(dH, dW),
        padding=(padH, padW),
        dilation=(dilationH, dilationW),
    )
    output.copy_(out)


def _ext_roi_align_backward(
    grad_output: Tensor,
    rois: Tensor,
    argmax_y: Tensor,
    argmax_x: Tensor,
    grad_input: Tensor,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    """RoIAlign is linear in its input: its gradient is torchvision's backward of any input
    of the same shape (zeros here), which autograd gives."""
    import torchvision

    if pool_mode != 1:
        raise NotImplementedError("torchvision stub of mmcv roi_align supports pool_mode='avg'")
    with torch.enable_grad():
        x = grad_input.new_zeros(grad_input.shape, requires_grad=True)
        out = torchvision.ops.roi_align(
            x,
            rois.to(x.dtype),
            (int(aligned_height), int(aligned_width)),
            spatial_scale=float(spatial_scale),
            sampling_ratio=int(sampling_ratio),
            aligned=bool(aligned),
        )
        (grad,) = torch.autograd.grad(out, x, grad_output)
    grad_input.copy_(grad)


def _deform_conv_grads(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    grad_output: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    import torchvision

    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (input, offset, weight)]
        out = torchvision.ops.deform_conv2d(
            leaves[0],
            leaves[1],
            leaves[2],
            None,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        return torch.autograd.grad(out, leaves, grad_output)


def _ext_deform_conv_backward_input(
    input: Tensor,
    offset: Tensor,
    gradOutput: Tensor,  # noqa: N803 - mmcv's keyword names
    gradInput: Tensor,  # noqa: N803
    gradOffset: Tensor,  # noqa: N803
    weight: Tensor,
    columns: Tensor,
    kW: int,  # noqa: N803
    kH: int,  # noqa: N803
    dW: int,  # noqa: N803
    dH: int,  # noqa: N803
    padW: int,  # noqa: N803
    padH: int,  # noqa: N803
    dilationW: int,  # noqa: N803
    dilationH: int,  # noqa: N803
    group: int,
    deformable_group: int,
    im2col_step: int,
) -> None:
    g_in, g_off, _ = _deform_conv_grads(
        input, offset, weight, gradOutput, (dH, dW), (padH, padW), (dilationH, dilationW)
    )
    gradInput.copy_(g_in)
    gradOffset.copy_(g_off)


def _ext_deform_conv_backward_parameters(
    input: Tensor,
    offset: Tensor,
    gradOutput: Tensor,  # noqa: N803 - mmcv's keyword names
    gradWeight: Tensor,  # noqa: N803
    columns: Tensor,
    ones: Tensor,
    kW: int,  # noqa: N803
    kH: int,  # noqa: N803
    dW: int,  # noqa: N803
    dH: int,  # noqa: N803
    padW: int,  # noqa: N803
    padH: int,  # noqa: N803
    dilationW: int,  # noqa: N803
    dilationH: int,  # noqa: N803
    group: int,
    deformable_group: int,
    scale: float,
    im2col_step: int,
) -> None:
    weight = gradWeight.new_zeros(gradWeight.shape)  # the weight gradient is linear in none
    # of the weight's values, only in input and offset: zeros stand in for it.
    _, _, g_w = _deform_conv_grads(
        input, offset, weight, gradOutput, (dH, dW), (padH, padW), (dilationH, dilationW)
    )
    gradWeight.add_(g_w, alpha=float(scale))


def _make_ext_module() -> types.ModuleType:
    mod = types.ModuleType("mmcv._ext")
    mod.__doc__ = "torchvision stand-in for mmcv's compiled ops (tests/parity/mmdet_reference.py)"
    mod.nms = _ext_nms
    mod.roi_align_forward = _ext_roi_align_forward
    mod.deform_conv_forward = _ext_deform_conv_forward
    mod.roi_align_backward = _ext_roi_align_backward
    mod.deform_conv_backward_input = _ext_deform_conv_backward_input
    mod.deform_conv_backward_parameters = _ext_deform_conv_backward_parameters
    setattr(mod, _STUB_FLAG, True)

    def __getattr__(name: str) -> Any:  # noqa: N807 - module-level __getattr__
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"mmcv._ext.{name} is not provided by the torchvision stub")

        return _missing

    mod.__getattr__ = __getattr__
    return mod


def install_mmcv_op_stubs() -> bool:
    """Make ``import mmcv.ops`` (hence ``import mmdet.models``) work with mmcv-lite.

    Idempotent. Returns True when the torchvision stand-in for ``mmcv._ext`` is in use, False
    when mmcv is missing or a real compiled ``mmcv._ext`` exists (then nothing is touched).
    """
    existing = sys.modules.get("mmcv._ext")
    if existing is not None:
        return bool(getattr(existing, _STUB_FLAG, False))
    if importlib.util.find_spec("mmcv") is None:
        return False
    if importlib.util.find_spec("mmcv._ext") is not None:
        return False  # full mmcv with compiled ops
    ext = _make_ext_module()
    sys.modules["mmcv._ext"] = ext
    import mmcv

    mmcv._ext = ext
    return True


def mmdet_available() -> bool:
    """True when mmdet 3.x can build the reference models here (cached).

    False only when mmdet / mmcv / mmengine is not installed at all, or the installed mmdet
    is not 3.x: tests then skip, naming the reason. With the ``CI`` environment variable set
    that is an error instead (CI installs requirements-parity.txt, so a skip would hide a
    broken install). Any other failure while importing (a broken install) always raises.
    """
    global _AVAILABLE, _UNAVAILABLE_REASON
    if _AVAILABLE is None:
        reason = None
        try:
            install_mmcv_op_stubs()
            import mmdet

            if not mmdet.__version__.startswith("3."):
                reason = f"mmdet 3.x required, found {mmdet.__version__}"
            else:
                importlib.import_module("mmdet.models")
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in ("mmdet", "mmcv", "mmengine"):
                raise
            reason = f"{type(e).__name__}: {e}"
        if reason is not None and os.environ.get("CI"):
            raise RuntimeError(
                f"CI is set but the mmdetection reference stack is unusable ({reason}); "
                "install it with `pip install --no-deps -r requirements-parity.txt`"
            )
        _AVAILABLE = reason is None
        _UNAVAILABLE_REASON = reason
    return _AVAILABLE


def mmdet_unavailable_reason() -> str:
    """Skip reason for tests (empty when mmdet is available)."""
    if mmdet_available():
        return ""
    return (
        f"mmdet reference stack not usable ({_UNAVAILABLE_REASON}); install it with "
        "`pip install --no-deps -r requirements-parity.txt` (see the header of that file)"
    )


# --------------------------------------------------------------------------------------------
# model configs: mmdetection's own config files, as the installed package ships them
# --------------------------------------------------------------------------------------------
# kind -> config file under mmdet/.mim/configs/ (the GCNet table rows these tests stand for)
CONFIG_FILES = {
    "mask_rcnn_r50_gc_r16": "gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py",
    "mask_rcnn_r50_syncbn_gc_r16": "gcnet/mask-rcnn_r50-syncbn-gcb-r16-c3-c5_fpn_1x_coco.py",
    "cascade_mask_rcnn_x101_gc_r4": (
        "gcnet/cascade-mask-rcnn_x101-32x4d-syncbn-r4-gcb-c3-c5_fpn_1x_coco.py"
    ),
    "cascade_mask_rcnn_x101_dcn_gc_r16": (
        "gcnet/cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco.py"
    ),
}


def mmdet_config_path(kind: str) -> str:
    """Path of ``kind``'s config file inside the installed mmdet package."""
    if kind not in CONFIG_FILES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {tuple(CONFIG_FILES)}")
    import mmdet

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", CONFIG_FILES[kind])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmdet {mmdet.__version__} ships no config file {path}")
    return path


def mmdet_model_cfg(
    kind: str, num_classes: int = 3, depth: int | None = None, tiny: bool = False
) -> dict:
    """The ``model`` dict of ``kind``'s mmdetection config file (with its train_cfg and
    test_cfg), read by ``mmengine.Config.fromfile``. Only what a test must change is changed:
    ``num_classes`` of every box / mask head, no pretrained backbone download, and optionally
    a smaller backbone ``depth`` (same blocks, GC, DCN and norms) and, with ``tiny``, the
    widths of ``tests.testing.TINY`` (:func:`narrow_`; the detectron2 side:
    ``tests.testing.narrow``) for CPU time."""
    from mmengine.config import Config

    model = Config.fromfile(mmdet_config_path(kind)).model.to_dict()
    model["backbone"]["init_cfg"] = None
    if depth is not None:
        model["backbone"]["depth"] = depth
    roi = model["roi_head"]
    for key in ("bbox_head", "mask_head"):
        heads = roi[key] if isinstance(roi[key], list) else [roi[key]]
        for head in heads:
            head["num_classes"] = num_classes
    if tiny:
        narrow_(model)
    return model


def narrow_(model: dict) -> dict:
    """An mmdetection ``model`` dict at the widths of ``tests.testing.TINY``, in place: the
    same layers, channels as ``tests.testing.narrow`` gives detectron2's model. ResNet(X)
    widths follow ``base_channels`` (stem, and res2's output is 4x); a ResNeXt keeps its
    groups, its res2 bottleneck ``groups * base_width`` wide."""
    from tests.testing import TINY

    backbone = model["backbone"]
    base = TINY["res2_out"] // 4
    assert TINY["stem"] == base, "mmdetection's ResNet stem is base_channels wide"
    backbone["base_channels"] = base
    groups = backbone.get("groups", 1)
    if groups > 1:  # width = planes * base_width / base_channels * groups: as detectron2's
        backbone["base_width"] = max(1, TINY["bottleneck"] // groups)  # 16 // groups per group
    else:
        assert TINY["bottleneck"] == base, "a ResNet bottleneck is base_channels wide at res2"
    fpn = TINY["fpn"]
    model["neck"]["in_channels"] = [base * 4 * 2**i for i in range(4)]
    model["neck"]["out_channels"] = fpn
    model["rpn_head"]["in_channels"] = model["rpn_head"]["feat_channels"] = fpn
    roi = model["roi_head"]
    for extractor in ("bbox_roi_extractor", "mask_roi_extractor"):
        roi[extractor]["out_channels"] = fpn
    for head in roi["bbox_head"] if isinstance(roi["bbox_head"], list) else [roi["bbox_head"]]:
        head["in_channels"], head["fc_out_channels"] = fpn, TINY["fc"]
    for head in roi["mask_head"] if isinstance(roi["mask_head"], list) else [roi["mask_head"]]:
        head["in_channels"], head["conv_out_channels"] = fpn, TINY["mask"]
    return model


# --------------------------------------------------------------------------------------------
# building and random weights
# --------------------------------------------------------------------------------------------
def _fan_in(m: nn.Module, w: Tensor) -> int:
    if isinstance(m, nn.ConvTranspose2d):  # weight (in, out/groups, kh, kw)
        return w.shape[0] // m.groups * (w.shape[2] * w.shape[3]) // (m.stride[0] * m.stride[1])
    return int(np.prod(w.shape[1:]))


# Output std targets of the head layers that emit predictions; every other conv / linear
# outside the backbone is scaled to unit output std.
_CALIB_TARGETS = {"rpn_cls": 1.0, "rpn_reg": 0.5, "fc_cls": 1.5, "fc_reg": 1.0, "conv_logits": 2.0}


def _calib_rois(g: torch.Generator, hw: tuple, n: int = 32) -> Tensor:
    h, w = hw
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 8.0
    x2y2 = torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))
    return torch.cat([torch.zeros(n, 1), xy, x2y2], dim=1)


@torch.no_grad()
def randomize_weights_(model: nn.Module, seed: int = 0, calib_hw: tuple = (128, 160)) -> None:
    """Seeded, non-trivial weights in place, so that every parameter and statistic matters.

    1. every conv / linear / deconv / DCN weight ~ N(0, 2 / fan_in) (this also overwrites the
       zero init of the GC block's last ``channel_add_conv`` conv), biases ~ U(-0.1, 0.1);
       DCN ``conv_offset`` (zero-init in mmcv) gets N(0, 0.25 / fan_in) weights and U(-1, 1)
       biases, i.e. fractional sampling offsets of order one pixel;
       norm affine params (BN, GC LayerNorm): weight ~ U(0.5, 1.5) (U(0.1, 0.3) for the
       ``bn3`` closing each bottleneck branch), bias ~ U(-0.2, 0.2);
    2. one calibration pass on two seeded uniform-noise images (backbone, neck, RPN forward,
       every RoI head stage on random rois of image 0) where
       * BN layers use batch statistics with ``momentum=None``: their running mean / var are
         replaced by these (non-trivial) statistics;
       * each conv / linear outside the backbone, on its first call, has weight and bias
         rescaled so that its output std hits a target (1, or ``_CALIB_TARGETS`` for the
         prediction layers), its output rescaled the same way (exact for affine layers), so
         activations stay O(1) and scores are well spread instead of saturated; the
         prediction layers' biases also centre each output channel (logits of every class,
         mask channel, objectness, delta) at zero on the calibration input.
    """
    g = torch.Generator().manual_seed(seed)

    def normal_(t: Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform_(t: Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    bns, hooks, hooked, done = [], [], [], set()

    def calib_hook(target: float, center: bool) -> Any:
        def hook(mod: nn.Module, args: Any, out: Tensor) -> Tensor | None:
            if mod in done:
                return None
            done.add(mod)
            f = target / float(out.float().std().clamp_min(1e-6))
            mod.weight.mul_(f)
            if mod.bias is not None:
                mod.bias.mul_(f)
            out = out * f
            if center:  # prediction layer: zero-mean per output channel (class / delta)
                dims = [d for d in range(out.dim()) if d != 1]
                mean = out.mean(dim=dims)
                mod.bias.sub_(mean)
                out = out - mean.view(1, -1, *([1] * (out.dim() - 2)))
            return out

        return hook

    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        b = getattr(m, "bias", None)
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            if w is not None:
                # small gamma on the last BN of each residual branch keeps the residual stream
                # (and so the statistics of unseen images) close to the calibration image's
                uniform_(w, *((0.1, 0.3) if name.endswith(".bn3") else (0.5, 1.5)))
            if b is not None:
                uniform_(b, -0.2, 0.2)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                bns.append(m)
        elif isinstance(w, nn.Parameter) and w.dim() >= 2:
            fan_in = _fan_in(m, w)
            if name.endswith("conv_offset"):
                normal_(w, 0.5 / fan_in**0.5)
                if b is not None:
                    uniform_(b, -1.0, 1.0)
                continue
            normal_(w, (2.0 / fan_in) ** 0.5)
            if isinstance(b, nn.Parameter):
                uniform_(b, -0.1, 0.1)
            if not name.startswith("backbone.") and isinstance(
                m, nn.Conv2d | nn.Linear | nn.ConvTranspose2d
            ):
                leaf = name.rsplit(".", 1)[-1]
                target = _CALIB_TARGETS.get(leaf, 1.0)
                hooks.append(m.register_forward_hook(calib_hook(target, leaf in _CALIB_TARGETS)))
                hooked.append((name, m))

    model.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average == statistics of this single batch
        m.train()
    try:
        # two seeded uniform-noise uint8 images, normalised the mmdet way (like test inputs)
        img = torch.randint(0, 256, (2, 3, *calib_hw), generator=g).float()
        mean = torch.tensor(MMDET_PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(MMDET_PIXEL_STD).view(1, 3, 1, 1)
        x = model.extract_feat((img - mean) / std)
        model.rpn_head(x)
        rois = _calib_rois(g, calib_hw)
        rh = model.roi_head
        if is_cascade(model):
            for stage in range(rh.num_stages):
                rh._bbox_forward(stage, x, rois)
                rh._mask_forward(stage, x, rois)
        else:
            rh._bbox_forward(x, rois)
            rh._mask_forward(x, rois)
    finally:
        for h in hooks:
            h.remove()
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.eval()
    missed = [n for n, m in hooked if m not in done]
    if missed:
        raise RuntimeError(f"calibration pass did not reach: {missed}")


def build_mmdet_model(
    kind: str,
    num_classes: int = 3,
    seed: int = 0,
    depth: int | None = None,
    test_cfg: dict | None = None,
    tiny: bool = False,
    train_cfg: dict | None = None,
) -> nn.Module:
    """An mmdet 3.x detector of ``kind`` (see :data:`KINDS`), eval mode, CPU, seeded weights.

    ``depth`` overrides the backbone depth (50 / 101 / 152) and ``tiny`` narrows every layer
    (:func:`narrow_`) for faster CPU tests; the default is the real architecture (R-50 for
    Mask R-CNN, X-101-32x4d for the cascades).
    ``train_cfg`` (e.g. ``{"rpn_proposal": {"max_per_img": 100}}``) is merged into the real
    train_cfg.
    ``test_cfg`` (e.g. ``{"rcnn": {"max_per_img": 20}}``) is merged into the real test_cfg.
    """
    if not mmdet_available():
        raise RuntimeError(mmdet_unavailable_reason())
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    register_all_modules(init_default_scope=True)
    cfg = mmdet_model_cfg(kind, num_classes=num_classes, depth=depth, tiny=tiny)
    for stage, overrides in (test_cfg or {}).items():
        cfg["test_cfg"][stage].update(overrides)
    for stage, overrides in (train_cfg or {}).items():
        cfg["train_cfg"][stage].update(overrides)
    torch.manual_seed(seed)  # default-initialised leftovers (none expected) stay reproducible
    model = MODELS.build(ConfigDict(copy.deepcopy(cfg)))
    model.gcnet_d2_cfg = cfg  # plain attribute, for save_mmdet_checkpoint's meta
    model.to("cpu")
    randomize_weights_(model, seed=seed)
    model.eval()
    return model


def save_mmdet_checkpoint(model: nn.Module, path: str, classes: tuple | None = None) -> None:
    """Write ``{"state_dict": ..., "meta": ...}`` like mmdet's runners do (keys unchanged)."""
    import mmcv
    import mmdet
    import mmengine

    if classes is None:
        head = model.roi_head.bbox_head
        head = head[-1] if isinstance(head, nn.ModuleList) else head
        classes = tuple(f"class{i}" for i in range(head.num_classes))
    classes = tuple(classes)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {
        "mmdet_version": mmdet.__version__,
        "mmengine_version": mmengine.__version__,
        "mmcv_version": mmcv.__version__,
        "CLASSES": classes,  # mmdet 2.x key
        "dataset_meta": {"classes": classes},  # mmdet 3.x key
        "config": repr(getattr(model, "gcnet_d2_cfg", None)),
        "epoch": 12,
        "iter": 0,
    }
    torch.save({"state_dict": state_dict, "meta": meta}, path)


# --------------------------------------------------------------------------------------------
# running mmdet's own pipeline pieces
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _capture(model: nn.Module, store: dict) -> Iterator[None]:
    """Record backbone / neck / RPN forward outputs and the RPN proposals during predict()."""
    handles = [
        model.backbone.register_forward_hook(lambda m, i, o: store.setdefault("backbone", o)),
        model.neck.register_forward_hook(lambda m, i, o: store.setdefault("neck", o)),
        model.rpn_head.register_forward_hook(lambda m, i, o: store.setdefault("rpn", o)),
    ]
    rpn_predict = model.rpn_head.predict  # bound method; shadow it on the instance

    def predict(*args: Any, **kwargs: Any) -> Any:
        out = rpn_predict(*args, **kwargs)
        store.setdefault("proposals", out)
        return out

    model.rpn_head.predict = predict
    try:
        yield
    finally:
        del model.rpn_head.predict
        for h in handles:
            h.remove()


def is_cascade(model: nn.Module) -> bool:
    return hasattr(model.roi_head, "num_stages")


@torch.no_grad()
def mmdet_intermediates(
    model: nn.Module, img_rgb_uint8: np.ndarray, rois: Tensor | int | None = None
) -> dict:
    """Run mmdet's own pipeline on one already-resized RGB uint8 image (H, W multiples of 32).

    Returns a dict:
      ``input``          (1, 3, H, W) normalised tensor built by mmdet's DetDataPreprocessor;
      ``backbone``       4 tensors (c2..c5); ``neck``: 5 tensors (P2..P6);
      ``rpn_cls`` / ``rpn_bbox``: per-level RPN logits (N, A, h, w) / deltas (N, 4A, h, w);
      ``proposals`` (K, 4), ``proposal_scores`` (K,): mmdet's RPN ``predict`` output
                         (sigmoid objectness, after nms_pre / NMS / max_per_img);
      if ``rois`` (R, 5: batch_idx, x1, y1, x2, y2) is given, or an int R for the first R
      ``proposals`` (returned as ``rois``), every stage's heads evaluated on exactly these
      rois (no refinement in between): ``cls_score`` / ``bbox_pred`` /
      ``mask_logits``: lists with one entry per stage (1 for Mask R-CNN);
      for cascades also mmdet's ``_refine_roi`` chain from ``rois``: ``refined_rois`` (rois fed
      to the last stage), ``refined_cls_score`` (stage-averaged logits) and
      ``refined_bbox_pred`` (last stage deltas);
      ``detections``: numpy ``bboxes`` (n, 4) float32, ``scores`` (n,), ``labels`` (n,) int64,
      ``masks`` (n, H, W) bool, from ``model.predict(..., rescale=True)``.
    """
    from mmdet.structures import DetDataSample

    img = np.asarray(img_rgb_uint8)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, img.shape
    h, w = img.shape[:2]
    assert h % 32 == 0 and w % 32 == 0, f"image size {(h, w)} must be multiples of 32"
    # mmdet loads images as BGR and its preprocessor (bgr_to_rgb=True) flips them back.
    chw_bgr = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))
    sample = DetDataSample(
        metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
    )
    data = model.data_preprocessor({"inputs": [chw_bgr], "data_samples": [sample]}, False)
    batch_inputs, samples = data["inputs"], data["data_samples"]

    store: dict = {}
    with _capture(model, store):
        results = model.predict(batch_inputs, samples, rescale=True)

    out: dict = {
        "input": batch_inputs,
        "backbone": list(store["backbone"]),
        "neck": list(store["neck"]),
        "rpn_cls": list(store["rpn"][0]),
        "rpn_bbox": list(store["rpn"][1]),
        "proposals": store["proposals"][0].bboxes,
        "proposal_scores": store["proposals"][0].scores,
    }

    if isinstance(rois, int):
        assert len(out["proposals"]) >= rois, f"{len(out['proposals'])} proposals < {rois}"
        rois = torch.cat([torch.zeros(rois, 1), out["proposals"][:rois]], dim=1)
        out["rois"] = rois
    if rois is not None:
        x = tuple(out["neck"])  # SingleRoIExtractor uses the first len(featmap_strides) levels
        rois = rois.to(torch.float32)
        rh = model.roi_head
        cls_l, box_l, mask_l = [], [], []
        if is_cascade(model):
            for stage in range(rh.num_stages):
                r = rh._bbox_forward(stage, x, rois)
                cls_l.append(r["cls_score"])
                box_l.append(r["bbox_pred"])
                mask_l.append(rh._mask_forward(stage, x, rois)["mask_preds"])
            metas = [s.metainfo for s in samples]
            ref_rois, ref_cls, ref_box = rh._refine_roi(x, rois, metas, (rois.shape[0],))
            out["refined_rois"] = ref_rois[0] if isinstance(ref_rois, list | tuple) else ref_rois
            out["refined_cls_score"] = ref_cls[0]
            out["refined_bbox_pred"] = ref_box[0]
        else:
            r = rh._bbox_forward(x, rois)
            cls_l.append(r["cls_score"])
            box_l.append(r["bbox_pred"])
            mask_l.append(rh._mask_forward(x, rois)["mask_preds"])
        out.update(cls_score=cls_l, bbox_pred=box_l, mask_logits=mask_l)

    pred = results[0].pred_instances
    out["detections"] = {
        "bboxes": pred.bboxes.cpu().numpy().astype(np.float32),
        "scores": pred.scores.cpu().numpy(),
        "labels": pred.labels.cpu().numpy().astype(np.int64),
        "masks": pred.masks.cpu().numpy().astype(bool),
    }
    return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_dict_prefixes(state_dict: dict, levels: int = 3) -> list[str]:
    """Sorted unique key prefixes (first ``levels`` dotted components)."""
    return sorted({".".join(k.split(".")[:levels]) for k in state_dict})


def to_float64_(model: nn.Module) -> nn.Module:
    """Run the mmdet model in float64, for comparisons free of float32 rounding noise.

    mmdet's mask paste builds its sampling grid in float32 and fails on float64 boxes, so
    the mask probabilities and boxes are cast to float32 right before it.
    """
    from mmdet.models.roi_heads.mask_heads import fcn_mask_head

    paste = fcn_mask_head._do_paste_mask
    if not getattr(paste, "_gcnet_d2_casts", False):

        def cast_then_paste(masks: Tensor, boxes: Tensor, *args: Any, **kwargs: Any) -> Any:
            return paste(masks.float(), boxes.float(), *args, **kwargs)

        cast_then_paste._gcnet_d2_casts = True
        fcn_mask_head._do_paste_mask = cast_then_paste
    return model.double()
