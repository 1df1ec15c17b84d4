"""int8 for ONNX Runtime: a whole-detector ONNX file statically quantized, calibrated on images.

``tools/export_model.py --format onnx --quantize int8 --calibration-images DIR`` exports the
fp32 file as usual (``model.onnx``, checked against eager), then writes ``model_int8.onnx``:

- onnxruntime's ``quant_pre_process`` (ONNX shape inference and graph optimisation; its
  symbolic shape inference cannot follow the data-dependent shapes after NMS and is skipped),
  then ``quantize_static`` in QDQ format: weights int8 per output channel, activations
  (uint8 by default: :data:`ACTIVATION_TYPES`) calibrated by MinMax on at most
  ``--calibration-count`` images of DIR (sorted by name), each prepared exactly as
  ``deploy/onnx_predictor.py`` prepares an image (its ``preprocess``, sized by the file's
  metadata), one image at a time so memory does not grow with the count;
- only the ops of :data:`DEFAULT_OP_TYPES` (convolutions, the box heads' fully connected
  layers, the ReLUs after them, the GC blocks' attention pooling; ``--quantize-ops`` changes
  it) are quantized; the convolutions that compute DCN offsets stay fp32 (a rounding of an
  offset moves where every tap samples), as do the layers producing scores and box / mask
  logits (as in bf16), element-wise arithmetic outside the backbone, ``DeformConv``,
  ``RoiAlign``, ``NonMaxSuppression``, the box decoding and every other op; the mask paste
  runs in the runtime, in fp32; a ``Shape`` reads the int8 tensor, not a dequantized copy;
- metadata: the fp32 file's (so ``deploy/onnx_predictor.py`` runs it unchanged) plus
  ``gcnet_d2.precision`` = ``int8`` and how it was quantized and calibrated
  (``quantization.*``, ``calibration.*``).

With ``--evaluate-on ANNOTATIONS.json IMAGE_DIR`` both files run through the same torch-free
runtime on that COCO set (:mod:`.onnx_evaluation`); the int8 file is written only when
neither box nor mask AP drops by more than ``--max-ap-drop``. Bad input (no images in DIR, a
route other than the ONNX detector, an unreadable annotation file, ``--evaluate-on`` without
``--quantize``) stops before anything is exported. The file goes to a temporary folder in the
output folder and is renamed into place last.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, DatasetError
from .errors import ExportRouteError, require_package
from .onnx_evaluation import CocoSet, evaluate_onnx, load_coco_set, read_bgr, runtime_module

__all__ = [
    "ACTIVATION_TYPES",
    "DEFAULT_OP_TYPES",
    "Int8Plan",
    "Int8Result",
    "add_arguments",
    "calibration_files",
    "offset_convs",
    "plan_from_args",
    "quantize_detector",
    "run_plan",
]

ACTIVATION_TYPES = ("uint8", "int8")
# ``Relu``: a convolution followed by a ReLU writes its int8 output on the ReLU's range at
# once, instead of int8 on its own range, back to fp32 for the ReLU, then int8 again.
# ``MatMul``: the GC blocks' attention pooling (features x softmax weights over H*W); an 8-bit
# step of the weights' range rounds the smallest weights of a peaked attention to zero, but
# on the quick start's model (200 held-out images) the AP drops to fp32 were box -0.20 /
# mask -0.21 with it and 0.37 / -0.12 without, and it saves dequantizing every GC block's
# input (0.53x -> 0.50x of ONNX Runtime fp32; docs/precision.md).
# ``--quantize-ops Conv,Gemm,Relu`` keeps it fp32.
DEFAULT_OP_TYPES = ("Conv", "Gemm", "Relu", "MatMul")
#: Element-wise arithmetic (``--quantize-ops ...,Add``) is quantized only on the backbone's
#: feature maps (residual, GC and FPN sums); elsewhere it computes anchors, box coordinates
#: and scores, and inside the GC blocks' context transform (a LayerNorm on C x 1 x 1, which
#: the exporter may write out as arithmetic) normalisation statistics.
ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div"})
FEATURE_SCOPE = "/backbone/"
CONTEXT_TRANSFORM_SCOPES = ("/channel_add_conv/", "/channel_mul_conv/")
#: The parameters (detectron2's names) of the layers that produce scores and box / mask
#: logits; a cascade numbers its stages (``box_predictor.1``, ``mask_head.0``).
OUTPUT_WEIGHTS = (
    r"\.rpn_head\.(objectness_logits|anchor_deltas)\.weight$",
    r"\.box_predictor(\.\d+)?\.\w+\.weight$",
    r"\.mask_head(\.\d+)?\.predictor\.weight$",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_NAME = "model_int8.onnx"
CALIBRATION_METHOD = "MinMax"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The int8 flags of ``tools/export_model.py``."""
    group = parser.add_argument_group("int8 (ONNX detector only, see docs/precision.md)")
    group.add_argument("--quantize", choices=("int8",), help="also write model_int8.onnx")
    group.add_argument("--calibration-images", metavar="DIR", help="images to calibrate on")
    group.add_argument("--calibration-count", type=int, default=16, metavar="N",
                       help="calibrate on the first N images of DIR by name (16)")  # fmt: skip
    group.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="uint8",
                       help="int8 activations' type; weights are int8 (uint8)")  # fmt: skip
    group.add_argument("--quantize-ops", default=",".join(DEFAULT_OP_TYPES), metavar="OPS",
                       help="comma-separated ONNX op types to quantize (%(default)s)")  # fmt: skip
    group.add_argument("--evaluate-on", nargs=2, metavar=("ANNOTATIONS", "IMAGE_DIR"),
                       help="COCO set: box / mask AP of the fp32 and int8 files")  # fmt: skip
    group.add_argument("--max-ap-drop", type=float, default=1.0, metavar="AP",
                       help="write the int8 file only if neither AP drops more (1.0)")  # fmt: skip


@dataclass
class Int8Plan:
    """Checked int8 inputs: the calibration images (decoded, BGR), the evaluation set."""

    calibration_dir: str
    images: list[np.ndarray]
    activation_type: str
    op_types: tuple[str, ...]
    coco: CocoSet | None
    max_ap_drop: float


@dataclass
class Int8Result:
    """What the int8 step wrote (``path``, "" if nothing), its report lines, whether it
    passed the AP check."""

    path: str = ""
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def calibration_files(folder: str, count: int) -> list[str]:
    """The first ``count`` image files (by suffix, sorted by name) directly in ``folder``."""
    if not os.path.isdir(folder):
        raise DatasetError(f"calibration images {folder}: no such folder")
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, n))
    )
    if not names:
        raise DatasetError(
            f"calibration images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return [os.path.join(folder, n) for n in names[:count]]


def plan_from_args(args: argparse.Namespace) -> Int8Plan | None:
    """The int8 step the tool's flags ask for (None without ``--quantize``), every input
    checked before anything slow runs."""
    if args.quantize is None:
        for flag, value in (("--evaluate-on", args.evaluate_on),
                            ("--calibration-images", args.calibration_images)):  # fmt: skip
            if value is not None:
                raise ConfigError(f"{flag} is for --quantize int8, which is not given")
        return None
    if args.format != "onnx" or args.part != "detector":
        raise ExportRouteError(
            f"--quantize int8 quantizes the whole-detector ONNX file: it needs --format onnx "
            f"and --part detector (got --format {args.format} --part {args.part})"
        )
    if not args.calibration_images:
        raise ConfigError("--quantize int8 needs --calibration-images DIR")
    if args.calibration_count < 1:
        raise ConfigError(f"--calibration-count must be >= 1, got {args.calibration_count}")
    op_types = tuple(t.strip() for t in args.quantize_ops.split(",") if t.strip())
    if not op_types:
        raise ConfigError("--quantize-ops names no op type")
    paths = calibration_files(args.calibration_images, args.calibration_count)
    coco = load_coco_set(*args.evaluate_on) if args.evaluate_on else None
    return Int8Plan(
        calibration_dir=args.calibration_images,
        images=[read_bgr(p, "calibration image") for p in paths],
        activation_type=args.activation_type,
        op_types=op_types,
        coco=coco,
        max_ap_drop=args.max_ap_drop,
    )


def output_layers(model: object) -> list[str]:
    """Names of the ONNX ``model``'s nodes that apply the weights of the layers producing
    scores and box / mask logits (:data:`OUTPUT_WEIGHTS`; read from the weight, as the
    exporter does not always keep the module's name on the node). They stay fp32, as in bf16
    (:mod:`gcnet_d2.precision`): an 8-bit step of a box delta moves the box."""
    weights = re.compile("|".join(OUTPUT_WEIGHTS))
    return [n.name for n in model.graph.node if len(n.input) > 1 and weights.search(n.input[1])]


def fp32_arithmetic(model: object) -> list[str]:
    """Names of the element-wise arithmetic nodes (:data:`ARITHMETIC`) of the ONNX ``model``
    that stay fp32: outside the backbone (box decoding, anchors, scores) and in the GC blocks'
    context transforms."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ARITHMETIC
        and (
            FEATURE_SCOPE not in node.name
            or any(scope in node.name for scope in CONTEXT_TRANSFORM_SCOPES)
        )
    ]


def shapes_read_quantized(model: object) -> int:
    """Point every ``Shape`` node of the ONNX ``model`` that reads a ``DequantizeLinear``'s
    output at that node's int8 input instead (the same shape), in place; how many.

    ONNX Runtime fuses a ``DequantizeLinear`` into the int8 op that consumes it, but a
    ``Shape`` of the same tensor (the GC blocks' and heads' reshapes) keeps it alive: a full
    pass over the feature map to read four numbers."""
    producers = {out: node for node in model.graph.node for out in node.output}
    count = 0
    for node in model.graph.node:
        producer = producers.get(node.input[0]) if node.op_type == "Shape" else None
        if producer is not None and producer.op_type == "DequantizeLinear":
            node.input[0] = producer.input[0]
            count += 1
    return count


def offset_convs(model: object) -> list[str]:
    """Names of the ``Conv`` nodes of the ONNX ``model`` whose output is a ``DeformConv``'s
    offset input (its third)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type == "DeformConv" and len(node.input) > 2:
            producer = producers.get(node.input[2])
            if producer is not None and producer.op_type == "Conv":
                names.append(producer.name)
    return names


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` over prepared inputs, with the ``set_range``
    its strided MinMax calibration calls (one image per range: memory stays one image's)."""

    def __init__(self, inputs: Sequence[np.ndarray]) -> None:
        self.inputs = list(inputs)
        self.set_range(0, len(self.inputs))

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self.inputs[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._next, None)
        return None if image is None else {"image": image}


def quantize_detector(
    fp32_path: str,
    inputs: Sequence[np.ndarray],
    work_dir: str,
    activation_type: str = "uint8",
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    metadata: dict[str, str] | None = None,
) -> str:
    """``fp32_path`` (a whole-detector ONNX file) statically quantized, calibrated on
    ``inputs`` (its ``image`` input: float32 3 x H x W, prepared as the runtime prepares),
    with ``metadata`` added; the path of the int8 file written in ``work_dir``."""
    onnx = require_package("onnx")
    require_package("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise ValueError("no calibration input")
    prepared = os.path.join(work_dir, "prepared.onnx")
    # Symbolic shape inference stops at the shapes NMS makes data-dependent ("Incomplete
    # symbolic shape inference"); ONNX's own shape inference and the optimiser still run.
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    graph = onnx.load(prepared)
    excluded = offset_convs(graph) + fp32_arithmetic(graph) + output_layers(graph)
    out = os.path.join(work_dir, OUTPUT_NAME)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(
        prepared,
        out,
        _Calibration(inputs),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        per_channel=True,
        activation_type=types[activation_type],
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
        extra_options={"CalibStridedMinMax": 1},
    )
    proto = onnx.load(out)
    shapes_read_quantized(proto)
    present = {p.key: p for p in proto.metadata_props}
    for key, value in (metadata or {}).items():
        entry = present[key] if key in present else proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, out)
    return out


def int8_metadata(plan: Int8Plan, count: int, fp32_meta: dict[str, str]) -> dict[str, str]:
    """What the int8 file says about itself, next to the fp32 file's metadata."""
    import onnxruntime

    resize = f"shorter side {fp32_meta['min_size_test']}, longer <= {fp32_meta['max_size_test']}"
    return {
        "gcnet_d2.precision": "int8",
        "quantization.format": "QDQ",
        "quantization.weights": "int8, per channel",
        "quantization.activations": plan.activation_type,
        "quantization.op_types": ",".join(plan.op_types),
        "quantization.fp32": "every op not listed in quantization.op_types, DCN offset convs, "
        "the score / box / mask logit layers, arithmetic outside the backbone, the mask paste "
        "(runtime)",
        "calibration.method": CALIBRATION_METHOD,
        "calibration.images": str(count),
        "calibration.source": os.path.basename(os.path.normpath(plan.calibration_dir)),
        "calibration.resize": f"as deploy/onnx_predictor.py ({resize})",
        "calibration.onnxruntime": onnxruntime.__version__,
    }


def _read_metadata(path: str) -> dict[str, str]:
    onnx = require_package("onnx")
    model = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def run_plan(plan: Int8Plan, fp32_path: str) -> Int8Result:
    """Quantize the exported fp32 file ``fp32_path`` as ``plan`` says; evaluate both when
    asked; rename the int8 file to ``model_int8.onnx`` next to it when it passes."""
    runtime = runtime_module()
    meta = _read_metadata(fp32_path)
    short, longest = int(meta["min_size_test"]), int(meta["max_size_test"])
    inputs = [runtime.preprocess(im, meta["input_format"], short, longest) for im in plan.images]
    out_dir = os.path.dirname(os.path.abspath(fp32_path))
    result = Int8Result()
    work_dir = tempfile.mkdtemp(prefix=".int8-", dir=out_dir)
    try:
        int8_meta = int8_metadata(plan, len(inputs), meta)
        tmp = quantize_detector(
            fp32_path, inputs, work_dir, plan.activation_type, plan.op_types, int8_meta
        )
        result.lines.append(
            f"int8: QDQ, per-channel int8 weights, {plan.activation_type} activations, "
            f"{','.join(plan.op_types)} quantized, calibrated on {len(inputs)} image(s) of "
            f"{plan.calibration_dir}"
        )
        if plan.coco is not None:
            result.ok = _check_ap(plan, fp32_path, tmp, result.lines)
        if result.ok:
            result.path = os.path.join(out_dir, OUTPUT_NAME)
            os.replace(tmp, result.path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _check_ap(plan: Int8Plan, fp32_path: str, int8_path: str, lines: list[str]) -> bool:
    """Both files' AP on the plan's COCO set, a line each and one for the drops; whether
    every drop is within ``max_ap_drop``."""
    coco = plan.coco
    fp32 = evaluate_onnx(fp32_path, coco)
    int8 = evaluate_onnx(int8_path, coco)
    names = {"bbox": "box", "segm": "mask"}
    where = f"{len(coco.images)} images of {coco.annotations}"
    for label, aps in (("fp32", fp32), ("int8", int8)):
        lines.append(f"{label} AP on {where}: " + ", ".join(
            f"{names[k]} {v:.2f}" for k, v in aps.items()))  # fmt: skip
    drops = {k: fp32[k] - int8[k] for k in fp32}
    ok = all(d <= plan.max_ap_drop for d in drops.values())
    lines.append(
        "int8 AP drop: "
        + ", ".join(f"{names[k]} {d:.2f}" for k, d in drops.items())
        + f" (at most {plan.max_ap_drop:g} allowed): "
        + ("ok" if ok else "too large, int8 file not written")
    )
    return ok
