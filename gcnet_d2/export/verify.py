"""Every route's check of its exported model against the eager one, sample by sample.

A route exports to bytes, reloads them and hands the reloaded model to :func:`check_detections`
(whole detector) or :func:`check_features` (backbone); each adds a line per sample to an
:class:`ExportResult` and clears its ``ok`` on a sample beyond tolerance. The caller writes the
file only when ``ok`` stays set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from detectron2.modeling import Backbone, GeneralizedRCNN
from detectron2.structures import Instances

from .backbone_features import backbone_outputs
from .compare import compare_instances, relative_error
from .tracing_adapter import eager_detections

BACKBONE_RTOL = 1e-4


@dataclass
class ExportResult:
    """What a route wrote and how far the exported model is from eager, per sample."""

    path: str = ""
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def _size(x: torch.Tensor) -> str:
    return "x".join(str(s) for s in x.shape[-2:])


def check_detections(
    model: GeneralizedRCNN,
    images: Sequence[torch.Tensor],
    exported: Callable[[torch.Tensor], Instances],
    result: ExportResult,
) -> None:
    """Compare the exported detector with eager on every image, a line each; after a failing
    one, how far eager is from itself there (:func:`eager_spread`)."""
    for i, image in enumerate(images):
        expected = eager_detections(model, image)
        diff = compare_instances(expected, exported(image))
        result.lines.append(f"sample {i} ({_size(image)}): {diff.summary()}")
        result.ok &= diff.ok
        if not diff.ok:
            spread = eager_spread(model, image, expected)
            result.lines.append(f"  eager itself on sample {i}, {spread}")


def eager_spread(model: GeneralizedRCNN, image: torch.Tensor, expected: Instances) -> str:
    """How far the eager model is from its detections ``expected`` on ``image`` when run with
    one thread instead of the current number (two if that is one): the rounding noise that
    any other runtime's kernels add too, amplified by the model. A summary line."""
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    torch.set_num_threads(other)
    try:
        again = eager_detections(model, image)
    finally:
        torch.set_num_threads(threads)
    return f"{other} vs {threads} threads: {compare_instances(expected, again).summary()}"


def check_features(
    backbone: Backbone,
    inputs: Sequence[torch.Tensor],
    exported: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    result: ExportResult,
) -> None:
    """Compare the exported backbone's feature maps with eager on every input (the samples,
    then the first one padded, :func:`.backbone_features.backbone_inputs`), a line each:
    the largest relative difference (:func:`.compare.relative_error`) over the maps."""
    for i, x in enumerate(inputs):
        expected = backbone_outputs(backbone, x)
        with torch.no_grad():
            got = exported(x)
        worst = max(relative_error(e, g) for e, g in zip(expected, got, strict=True))
        what = f"sample {i}" if i < len(inputs) - 1 else "sample 0 padded"
        result.lines.append(
            f"{what} ({_size(x)}): max relative difference of the {len(expected)} feature maps "
            f"{worst:.3g}"
        )
        result.ok &= worst <= BACKBONE_RTOL
