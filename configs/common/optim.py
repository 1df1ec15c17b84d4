"""``SGD``: the table's optimizer (Base-GCNet-RCNN-FPN.yaml's SOLVER): lr 0.02 for 16
images, momentum 0.9, weight decay 1e-4 on every parameter, norms included (as mmdetection)."""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

SGD = L(torch.optim.SGD)(
    # params.model is set to the model before the optimizer is instantiated
    params=L(get_default_optimizer_params)(weight_decay_norm=1e-4, bias_lr_factor=1.0),
    lr=0.02,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    foreach=True,  # as detectron2's YAML build_optimizer
)
