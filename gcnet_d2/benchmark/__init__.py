"""The parts of ``tools/benchmark.py``: timing, memory, fixtures, sections, report, targets.

Why inside the package: ``tools/`` is not importable by name (detectron2's wheel installs a
top-level ``tools`` package that shadows a repository folder of that name), and other projects
that build GC models on gcnet_d2 can time and measure them with the same paired statistics
(``gcnet_d2.benchmark.timing``) and memory probes. ``import gcnet_d2`` does not import this
package, so it costs the library nothing; ``tools/benchmark.py`` is the command line.

- :mod:`.timing`: interleaved paired timing and the statistics of its ratios.
- :mod:`.memory`: peak memory of one call (CUDA allocator, or live tensor bytes + RSS).
- :mod:`.fixtures`: models with calibrated random weights, inputs, variant names.
- :mod:`.sections`: the block, bottleneck, backbone, Mask R-CNN and training sections.
- :mod:`.extra_sections`: the FLOPs and options (channels_last, bf16, compile) sections.
- :mod:`.report`: result rows, printing, Markdown, the machine description.
- :mod:`.targets`: the cost targets each run is checked against.
"""
