"""The benchmark: ``make bench``, or from the repository root ``python -m scripts.bench.run --help``.

Comparison 8 (CUDA) is ``python -m scripts.bench.gpu``; ``bash scripts/bench/gpu_session.sh``
runs it and the GPU tests on a device machine.
"""
