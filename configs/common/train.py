"""``train``: the trainer settings read by ``lazy_train_net.py`` (detectron2's
``tools/lazyconfig_train_net.py`` layout): 1x length, a checkpoint per epoch, one evaluation
at the end. Without CUDA, ``lazy_train_net.py`` runs on the CPU."""

train = dict(
    output_dir="./output",
    # ImageNet init (torchvision ResNet-50, pytorch style); see docs/training.md "Training on COCO"
    init_checkpoint="",
    max_iter=87948,
    # mixed precision training (gcnet_d2.amp): float16 + grad scaler on CUDA, bfloat16 on the CPU
    amp=dict(enabled=False),
    # inference precision of evaluation (--eval-only too): "fp32" or "bf16"; YAML's
    # TEST.PRECISION (gcnet_d2.precision, docs/precision.md)
    eval_precision="fp32",
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=7329, max_to_keep=100),
    eval_period=0,  # 0: evaluate once, at the end of training
    log_period=20,
    device="cuda",
    seed=-1,
)
