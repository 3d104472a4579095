"""Project scripts (training, export, demo, benchmarks); a package so ``python -m scripts.bench.run`` works."""
