"""What gcnet_d2's tests (and, for development, benchmarks/) share, in one place.

- paths and table configs: :data:`REPO`, :data:`QUICKSTART`, :func:`table_config_names`,
  :func:`documented_commands`;
- one tiny model: :data:`TINY` widths, :func:`narrow`, :data:`TINY_OPTS` / :func:`tiny_cfg`
  (every row's architecture at a fraction of its width, 64 px images);
- one way to run Python in a child process: :func:`python_env` / :func:`run_python`, and a
  port for its process group that no other pytest-xdist worker gets: :func:`free_port`;
- one COCO-file writer: :func:`write_coco`, :func:`box_annotation`, :func:`write_image`;
- random weights: :func:`randomize` (unit tests of modules: non-trivial values everywhere)
  and :func:`realistic_weights` (whole detectors that behave like trained ones: non-zero GC
  blocks and DCN offsets, norms calibrated on an image, peaked class scores), built from
  :func:`randomize_context_blocks`, :func:`randomize_offsets`, :func:`calibrate_norms` and
  :func:`peaked_class_scores`, which benchmarks/ uses too;
- the export tests' three families: :data:`FAMILIES`, :func:`tiny_detector`,
  :func:`sample_image`.

Optional packages (onnx, onnxruntime, ...) are asked for with
``tests.missing_packages.require``: a skip locally, a failure naming the package under CI.

mmdetection's side of the parity tests stays in ``tests/parity/mmdet_reference.py``: it
randomises an mmdetection model (its own module names, its own forward pieces for the
calibration pass) *before* its weights are converted to ours, so it cannot run on our model.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from PIL import Image
from torch import nn

import gcnet_d2
from gcnet_d2 import fast
from gcnet_d2.layers import ContextBlock, DeformConv2dWithOffset, FrozenStatsBatchNorm2d

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
QUICKSTART_NAME = "quickstart/mask_rcnn_r50_fpn_r16_gcb_synthetic.yaml"
QUICKSTART = str(REPO / "configs" / QUICKSTART_NAME)
R50_GC = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
SYNCBN_GC = str(REPO / "configs/gcnet/mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml")
HOOKED = str(REPO / "tests" / "tools" / "train_net_hooked.py")


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
# Every row's architecture (depth, groups, GC blocks, DCN, FPN, heads) at a fraction of its
# width: the channels of the stem, of res2's output and of one group of res2's bottleneck
# (all groups together for a grouped row: X-101 32x4d keeps its 32 groups, 16 // 32 -> 1
# channel each), FPN, box head FC and mask head convs. tests/parity/mmdet_reference.py
# narrows mmdetection's models to the same widths.
TINY = {"stem": 16, "res2_out": 64, "bottleneck": 16, "fpn": 64, "fc": 64, "mask": 16}
TINY_WIDTHS = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", str(TINY["stem"]),
    "MODEL.RESNETS.RES2_OUT_CHANNELS", str(TINY["res2_out"]),
    "MODEL.RESNETS.WIDTH_PER_GROUP", str(TINY["bottleneck"]),
    "MODEL.FPN.OUT_CHANNELS", str(TINY["fpn"]),
    "MODEL.ROI_BOX_HEAD.FC_DIM", str(TINY["fc"]),
    "MODEL.ROI_MASK_HEAD.CONV_DIM", str(TINY["mask"]),
]  # fmt: skip
# The tiny widths with 64 px images, few proposals and RoIs: a Mask R-CNN R-50-FPN runs a few
# CPU training iterations a second.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.DEVICE", "cpu",
    *TINY_WIDTHS,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
]  # fmt: skip

# A LazyConfig row (Mask R-CNN R-50-FPN GC r16) and the overrides that train it 2 iterations
# at 96 px on the generated dataset, then evaluate it on the 12 held-out images.
LAZY_ROW = "configs/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.py"
LAZY_TINY_OPTS = [
    "train.max_iter=2", "train.checkpointer.period=1000",
    "dataloader.train.dataset.names=gcnet_synthetic_train",
    "dataloader.test.dataset.names=gcnet_synthetic_val",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[96]",
    "dataloader.train.mapper.augmentations.0.max_size=128",
    "dataloader.test.mapper.augmentations.0.short_edge_length=[96]",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "model.roi_heads.num_classes=3", "model.roi_heads.batch_size_per_image=32",
    "model.backbone.bottom_up.stages.norm=BN", "model.backbone.bottom_up.freeze_at=0",
    "model.proposal_generator.post_nms_topk=[64,50]",
]  # fmt: skip


def narrow(cfg: CfgNode, depth: int | None = None) -> CfgNode:
    """``cfg`` at the :data:`TINY` widths (the rest unchanged), in place; ``depth`` replaces
    the ResNet depth (50 runs an X-101 row as X-50, the same blocks)."""
    cfg.merge_from_list(TINY_WIDTHS)
    res = cfg.MODEL.RESNETS
    res.WIDTH_PER_GROUP = max(1, TINY["bottleneck"] // res.NUM_GROUPS)
    if depth is not None:
        res.DEPTH = depth
    return cfg


def tiny_cfg(name: str = QUICKSTART_NAME, *opts: str, depth: int | None = None) -> CfgNode:
    """The packaged config ``name`` with :data:`TINY_OPTS` (:func:`narrow`, ``depth``), then
    ``opts`` (``KEY VALUE`` pairs)."""
    cfg = gcnet_d2.get_config(name)
    cfg.merge_from_list(TINY_OPTS)
    narrow(cfg, depth)
    cfg.merge_from_list(list(opts))
    return cfg


def table_config_names() -> list[str]:
    """The 19 GCNet table configs shipped under configs/gcnet/."""
    return [n for n in gcnet_d2.list_configs() if n.startswith("gcnet/")]


def documented_commands(script: str) -> list[list[str]]:
    """The arguments of every ```bash line in README.md, docs/*.md, tools/README.md and
    benchmarks/README.md that runs ``script``."""
    commands = []
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in [*docs, REPO / "tools" / "README.md", REPO / "benchmarks" / "README.md"]:
        if not doc.is_file():
            continue
        blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                for i, word in enumerate(words):
                    if word.endswith(script):
                        args = words[i + 1 :]
                        ends = [j for j, w in enumerate(args) if w in ("&&", "||", "|", ";")]
                        commands.append(args[: ends[0]] if ends else args)
    return commands


# --------------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------------
def synthetic_root(tmp_path_factory) -> str:  # noqa: ANN001 - pytest's TempPathFactory
    """One generated quick-start dataset per test session (generation is idempotent)."""
    from gcnet_d2.data import generate_synthetic_coco

    root = tmp_path_factory.getbasetemp() / "gcnet_synthetic"
    generate_synthetic_coco(root)
    return str(root)


def python_env(
    synth_root: str | None = None, pythonpath: str | None = str(REPO), **extra: str
) -> dict[str, str]:
    """This process's environment for a child Python: one thread (the same kernels in every
    run, no oversubscription on 2 cores), no warnings, ``pythonpath`` in place of the
    inherited ``PYTHONPATH`` (the checkout by default; None: unset), the generated dataset
    at ``synth_root`` when given, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    if synth_root is not None:
        env["GCNET_SYNTH_ROOT"] = synth_root
    env.update(extra)
    return env


def run_python(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: str | Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """``python *args`` (a script and its arguments, or ``-c CODE ...``) in ``cwd``, with
    :func:`python_env` unless ``env`` is given; output captured as text."""
    return subprocess.run(
        [PYTHON, *args],
        cwd=cwd,
        env=python_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Each pytest-xdist worker (gw0, gw1, ...) draws ports from its own block below Linux's
# ephemeral range (32768-60999, where bind(0) and outgoing connections take theirs), starting
# at a random place in it (two test runs at once on one machine) and moving on at each call.
PORT_BASE, PORT_BLOCK = 20000, 1000
_port_start = random.Random(os.getpid()).randrange(PORT_BLOCK)
_port_calls = itertools.count()


def free_port() -> int:
    """A TCP port nothing is bound to now, for a child process group's master: never one that
    another xdist worker of this run can return, nor one this process returned before."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    block = int(worker[2:]) if worker[2:].isdigit() else 0
    for _ in range(PORT_BLOCK):
        port = PORT_BASE + block * PORT_BLOCK + (_port_start + next(_port_calls)) % PORT_BLOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {PORT_BASE + block * PORT_BLOCK} + {PORT_BLOCK}")


@contextlib.contextmanager
def export_tool() -> Iterator[object]:
    """``tools/export_model.py`` as a module named ``export_model`` (its dataclass looks its
    module up in ``sys.modules``), for calling its ``main(argv)`` and helpers in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_model", REPO / "tools/export_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_model"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["export_model"]


# --------------------------------------------------------------------------------------------
# small COCO datasets
# --------------------------------------------------------------------------------------------
def write_image(path: Path, pixels: np.ndarray, **save_args: object) -> str:
    """``pixels`` (H x W x 3 uint8, RGB) saved by PIL to ``path`` (format from its suffix)."""
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, **save_args)
    return str(path)


def box_annotation(image_id: int, bbox: Sequence[float], category_id: int = 1, **extra) -> dict:
    """A COCO annotation of box ``bbox`` (x, y, w, h) whose mask is the box's rectangle."""
    x, y, w, h = bbox
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        "area": w * h,
        "iscrowd": 0,
        **extra,
    }


def write_coco(
    root: Path,
    images: Sequence[tuple[str, int, int]],
    annotations: Sequence[dict],
    categories: Sequence[str] = ("thing",),
    prefix: str = "test_coco",
) -> tuple[str, Path]:
    """``root/instances.json`` for the images already in ``root`` (``(file name, height,
    width)``, ids 1, 2, ... in order) and ``annotations`` (ids 1, 2, ... where missing),
    categories 1, 2, ... named ``categories``; registered with detectron2's
    ``register_coco_instances`` under a fresh name ``prefix_<hex>``: ``(name, json path)``."""
    from detectron2.data.datasets import register_coco_instances

    coco = {
        "images": [
            {"id": i, "file_name": f, "height": h, "width": w}
            for i, (f, h, w) in enumerate(images, start=1)
        ],
        "annotations": [{"id": k, **a} for k, a in enumerate(annotations, start=1)],
        "categories": [{"id": i, "name": n} for i, n in enumerate(categories, start=1)],
    }
    json_file = Path(root) / "instances.json"
    json_file.write_text(json.dumps(coco))
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root))
    return name, json_file


# --------------------------------------------------------------------------------------------
# random weights
# --------------------------------------------------------------------------------------------
def randomize(module: nn.Module, std: float = 0.2, conv_std: float | None = None) -> nn.Module:
    """Non-trivial values everywhere, for comparing a module with another formulation of it:
    zero-initialised convs, norm affines and statistics included.

    Parameters ~ N(0, std) (``conv_std`` for conv weights and biases, when given); norm
    weights get +1; running statistics and FrozenBN's buffer affine are drawn around theirs.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_conv = "conv" in name and "norm" not in name
            p.normal_(0, conv_std if conv_std is not None and is_conv else std)
            if name.endswith("norm.weight"):
                p.add_(1.0)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("norm.weight"):  # FrozenBN keeps its affine as buffers
                b.uniform_(0.5, 1.5)
            elif name.endswith("norm.bias"):
                b.normal_(0, 0.2)
    return module


@torch.no_grad()
def randomize_context_blocks(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """GC blocks as after training: every parameter ~ N(0, std), the closing LayerNorm's
    weight 1, so no transform is exactly zero (the same work, realistic values)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, ContextBlock):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            for seq in (m.channel_add_conv, m.channel_mul_conv):
                if seq is not None:
                    seq[1].weight.fill_(1.0)


@torch.no_grad()
def randomize_offsets(model: nn.Module, seed: int = 0) -> None:
    """DCN offsets as after training (mmcv initialises them to zero): of the order of a
    pixel, varying over the map."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, DeformConv2dWithOffset):
            for p, std in ((m.conv_offset.weight, 0.002), (m.conv_offset.bias, 0.7)):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


NORM_TYPES = (FrozenBatchNorm2d, FrozenStatsBatchNorm2d, nn.modules.batchnorm._BatchNorm)


@contextlib.contextmanager
def plain_code(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` on its plain modules inside the block (:func:`gcnet_d2.fast.remove`), then
    back to the speed-ups it had, each module's settings and weights' memory order included."""
    from gcnet_d2.fast.channels_last import enable_channels_last, is_channels_last

    saved = [(m, type(m), dict(m.__dict__)) for m in model.modules()]
    channels_last = [
        m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
        and is_channels_last(m.weight)
    ]  # fmt: skip
    fast.remove(model)
    try:
        yield model
    finally:
        for m, cls, attrs in saved:
            m.__class__ = cls
            for key, value in attrs.items():  # what remove() dropped (fold_norm, gemm_1x1, ...)
                m.__dict__.setdefault(key, value)
        for m in channels_last:
            enable_channels_last(m)


@torch.no_grad()
def calibrate_norms(model: nn.Module, run: Callable[[], object], branch_gain: float = 0.25) -> int:
    """Data-dependent init: every norm's statistics := those of its input on one forward
    (``run``); returns how many norms there are, all calibrated.

    The forward runs the plain modules (:func:`plain_code`): a model with
    ``gcnet_d2.fast.apply`` folds its frozen norms into the convolutions at inference, so the
    norms would never run and never be calibrated.

    Random weights with unit statistics make activations explode or vanish (denormals slow
    the CPU; a random R-101's features reach 1e5); calibrated, every layer sees O(1) values as
    in a trained network. The last norm of each residual branch (``conv3.norm``) outputs
    ``branch_gain`` times unit scale, as trained ResNets' small last-BN scales do; with unit
    gain a random 50-layer ResNet is chaotic (a 0.4% input change moves res5 by ~40%), which
    would make any numerical comparison (bf16, compile) meaningless.
    """
    handles, seen = [], set()

    def hook(module: nn.Module, inputs: tuple, gain: float) -> None:
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_((x.var(dim=(0, 2, 3)) + 1e-3) / gain**2)
        seen.add(module)

    norms = {}
    for name, m in model.named_modules():
        if isinstance(m, NORM_TYPES) and getattr(m, "running_mean", None) is not None:
            gain = branch_gain if name.endswith("conv3.norm") else 1.0
            handles.append(m.register_forward_pre_hook(partial(hook, gain=gain)))
            norms[name] = m
    was_training = model.training
    model.eval()
    try:
        with plain_code(model):
            run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missed = [name for name, m in norms.items() if m not in seen]
    if missed:
        raise RuntimeError(f"the calibration forward did not reach the norms {missed[:5]}")
    return len(norms)


def box_predictors(model: nn.Module) -> list[nn.Module]:
    """The detector's box predictor(s): one, or one per cascade stage."""
    predictor = model.roi_heads.box_predictor
    return list(predictor) if isinstance(predictor, nn.ModuleList) else [predictor]


@torch.no_grad()
def peaked_class_scores(
    model: nn.Module,
    background: float = -4.0,
    class_std: float = 3.0,
    weight_gain: float = 0.1,
    seed: int = 4,
) -> None:
    """Class logits that a trained detector's resemble, in every box predictor.

    With random weights every class scores ~1/81, below the 0.05 test threshold, so nothing
    would be detected and the mask head would never run. Each class gets a bias ~ N(0,
    ``class_std``), the background ``background``; the weights are scaled by ``weight_gain``
    (how much a box's content moves its scores). The defaults give each box a few classes
    above 0.05 (NMS and the mask head see full loads); a high background with small class
    biases and large weights (:data:`FEW_DETECTIONS`) leaves a handful of confident
    detections whose number depends on the image.
    """
    gen = torch.Generator().manual_seed(seed)
    for predictor in box_predictors(model):
        cls_score = predictor.cls_score
        cls_score.weight.mul_(weight_gain)
        bias = torch.randn(cls_score.bias.shape, generator=gen) * class_std
        bias[-1] = background  # detectron2's background is the last class
        cls_score.bias.copy_(bias)


FEW_DETECTIONS = {"background": 3.0, "class_std": 0.5, "weight_gain": 30.0}


def realistic_weights(model: nn.Module, image: torch.Tensor, seed: int = 0) -> nn.Module:
    """A detector built with detectron2's init made to behave like a trained one, in place:
    GC blocks that change their input (:func:`randomize_context_blocks`, std 0.05), DCN
    offsets of about a pixel (:func:`randomize_offsets`), norms calibrated on ``image``
    (C x H x W, :func:`calibrate_norms`), class scores peaked (:data:`FEW_DETECTIONS`): an
    image gets a handful of confident, well-separated detections whose number depends on its
    content. Returns ``model`` in its mode before the call."""
    randomize_context_blocks(model, seed, std=0.05)
    randomize_offsets(model, seed)
    calibrate_norms(model, partial(model, [{"image": image}]))
    peaked_class_scores(model, **FEW_DETECTIONS)
    return model


# --------------------------------------------------------------------------------------------
# the export tests' models and images
# --------------------------------------------------------------------------------------------
# The three families the export routes support, one table row each.
FAMILIES = {
    "gc_mask": R50_GC,
    "gc_cascade": (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.yaml"
    ),
    "dcn_gc_cascade": (
        "gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5"
        "_1x_coco.yaml"
    ),
}
# Three classes, up to 60 proposals and detections per image at test time.
EXPORT_OPTS = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "60",
    "TEST.DETECTIONS_PER_IMAGE", "60",
]  # fmt: skip


def sample_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A uint8 C x H x W image of a few flat rectangles on noise (content varies with seed)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    for _ in range(4):
        y0 = int(torch.randint(0, height // 2, (1,), generator=g))
        x0 = int(torch.randint(0, width // 2, (1,), generator=g))
        h = int(torch.randint(height // 6, height // 2, (1,), generator=g))
        w = int(torch.randint(width // 6, width // 2, (1,), generator=g))
        color = torch.randint(0, 256, (3, 1, 1), generator=g, dtype=torch.uint8)
        image[:, y0 : y0 + h, x0 : x0 + w] = color
    return image


def export_cfg(family: str) -> CfgNode:
    """The tiny (:func:`tiny_cfg`, X-101 rows as X-50) config of an export family."""
    return tiny_cfg(FAMILIES[family], *EXPORT_OPTS, depth=50)


def realistic_export_model(cfg: CfgNode, seed: int = 0) -> nn.Module:
    """``cfg``'s plain model (eval mode) with :func:`realistic_weights` (calibrated on a
    128 x 160 :func:`sample_image`)."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    return realistic_weights(model, sample_image(128, 160, seed), seed)


def tiny_detector(family: str, seed: int = 0) -> tuple[CfgNode, nn.Module]:
    """``(cfg, eval-mode model)`` of a family of :data:`FAMILIES`, realistic random weights,
    with the speed-ups ``tools/export_model.py`` applies (:func:`gcnet_d2.fast.apply`)."""
    cfg = export_cfg(family)
    return cfg, fast.apply(realistic_export_model(cfg, seed), cfg)


def imported_modules(path: Path) -> set[str]:
    r"""Absolute names of the modules (and ``module.name``\ s) that gcnet_d2's file ``path``
    imports, relative imports resolved: read from its source, nothing is run."""
    root = Path(__file__).resolve().parent.parent
    package = ".".join(Path(path).resolve().relative_to(root).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names
