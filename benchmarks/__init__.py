"""gcnet_d2's benchmarks (development only, not installed): timing, memory, fixtures, sections,
report, targets, and the scripts that use them.

A top-level folder of the repository, not part of the ``gcnet_d2`` package (``setup.py``
installs ``gcnet_d2`` and ``gcnet_d2.*`` only) and not named ``tools`` (detectron2's wheel
installs a top-level ``tools`` package that would shadow it). The scripts put the repository
root on ``sys.path``, so ``python benchmarks/run.py ...`` works from a checkout; tests import
``benchmarks.*`` the same way (``tests/conftest.py``). See ``benchmarks/README.md``.

- :mod:`.run`: the command line (sections, JSON and Markdown report, targets).
- :mod:`.timing`: interleaved paired timing and the statistics of its ratios.
- :mod:`.memory`: peak memory of one call (CUDA allocator, or live tensor bytes + RSS).
- :mod:`.fixtures`: models with calibrated random weights, inputs, variant names.
- :mod:`.sections`: the block, bottleneck, backbone, Mask R-CNN and training sections.
- :mod:`.extra_sections`: the FLOPs and options (channels_last, bf16, compile) sections.
- :mod:`.recipe_section`: mmdetection's training components vs Detectron2's.
- :mod:`.model_vs_mmdet`: whole-detector inference, ours vs mmdetection (``--sections mmdet``).
- :mod:`.report`: result rows, printing, Markdown, the machine description.
- :mod:`.targets`: the cost targets each run is checked against.
- :mod:`.compile_check`, :mod:`.export_speed`: standalone GPU ``torch.compile`` check and
  eager vs traced TorchScript speed.
"""
