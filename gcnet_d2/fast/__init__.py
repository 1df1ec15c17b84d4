"""Exact speed-ups, applied to a built model from outside by one call: :func:`apply`.

A model built by ``build_model(cfg)`` or ``instantiate(cfg.model)`` is the plain model: the
paper's formulation, correct on its own. :func:`apply` switches the classes of some of its
modules to subclasses that compute the same function faster in eager mode (no parameter of
their own: state dicts, checkpoints and ``load_state_dict`` are unchanged; :mod:`.swap`);
each takes its plain code while the model is traced, scripted, compiled or exported where its
fast form would not survive that (:mod:`gcnet_d2.utils.tracing`). ``train_net.py``,
``lazy_train_net.py``, ``GCNetPredictor`` and ``tools/export_model.py`` call it. Each switch
governs what its name says, on any detectron2 model (any RoI heads, YAML or LazyConfig); a
YAML config sets them in its ``FAST`` node, a LazyConfig in a top-level ``fast`` dict (the
same names in lower case; :class:`FastOptions`):

============================  ===========================================================
``FAST`` key                  what it switches (module; measured reason in its docstring)
============================  ===========================================================
``FOLD_FROZEN_NORMS``         fixed-affine norms folded into the convs before them
                              (:mod:`.norm_fold`), and the GC bottleneck's ``conv3`` +
                              norm + GC block as one product (:mod:`.gc_fold`)
``CONV1X1_GEMM``              1x1 convs on large CPU maps as matrix products at inference
                              (:mod:`.conv1x1_gemm`)
``PARALLEL_ROI_ALIGN``        every ``ROIPooler``'s RoIAlign over the CPU threads
                              (:mod:`.roi_align`)
``LEAN_FPN``                  FPN inference holding fewer maps at once (:mod:`.lean_fpn`)
``COMPILE``                   ``torch.compile`` of ``model.backbone`` with that backend
``CHANNELS_LAST``             convolution weights in channels-last memory order
                              (:mod:`.channels_last`)
============================  ===========================================================
"""

from __future__ import annotations

from torch import nn

from .channels_last import disable_channels_last, enable_channels_last
from .conv1x1_gemm import conv1x1_as_gemm
from .gc_fold import disable_gc_fold, enable_gc_fold
from .lean_fpn import LeanFPN, disable_lean_fpn, enable_lean_fpn
from .norm_fold import NormFoldingConv2d, disable_conv_speedups, enable_conv_speedups
from .options import FastOptions
from .roi_align import ParallelROIAlign, disable_parallel_roi_align, enable_parallel_roi_align
from .swap import restore_classes, swap_classes


def apply(model: nn.Module, options: FastOptions | object | None = None) -> nn.Module:
    """Switch ``model``'s speed-ups to ``options``, in place; returns ``model``.

    ``options``: a :class:`FastOptions`, a detectron2 config (its ``FAST`` node), a LazyConfig
    (its ``fast`` entry), a mapping of option names, or None for the defaults (all on, no
    compile). A switch that is off restores the plain modules, so ``apply`` can be called
    again with other options; :func:`remove` undoes it all. Call it after loading weights or
    before: the modules keep their parameters.
    """
    if options is None:
        options = FastOptions()
    elif not isinstance(options, FastOptions):
        options = FastOptions.from_config(options)
    enable_conv_speedups(model, options.fold_frozen_norms, options.conv1x1_gemm)
    (enable_gc_fold if options.fold_frozen_norms else disable_gc_fold)(model)
    (enable_parallel_roi_align if options.parallel_roi_align else disable_parallel_roi_align)(model)
    (enable_lean_fpn if options.lean_fpn else disable_lean_fpn)(model)
    (enable_channels_last if options.channels_last else disable_channels_last)(model)
    if options.compile:
        backbone = getattr(model, "backbone", model)
        backbone.compile(backend=options.compile)
    return model


def remove(model: nn.Module) -> nn.Module:
    """Every module of ``model`` back to its plain class (a compiled backbone stays compiled)."""
    disable_conv_speedups(model)
    disable_gc_fold(model)
    disable_parallel_roi_align(model)
    disable_lean_fpn(model)
    disable_channels_last(model)
    return model


__all__ = [
    "FastOptions",
    "LeanFPN",
    "NormFoldingConv2d",
    "ParallelROIAlign",
    "apply",
    "conv1x1_as_gemm",
    "remove",
    "restore_classes",
    "swap_classes",
]
