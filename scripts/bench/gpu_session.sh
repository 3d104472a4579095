#!/usr/bin/env bash
# One device-machine session for comparison 8 (see docs/performance.md): installs the wheels
# carried in .whl (the machine has torch and transformers, and no network), runs the GPU
# bench, then the GPU tests. Results and logs go to $OUT.
#   run with carry [".whl", ".bench-models/tok32k"], from the repo root:  bash scripts/bench/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout "${BENCH_S:-330}" python3 -m scripts.bench.gpu --tokenizer .bench-models/tok32k --out "$OUT/gpu" --budget-s "${BUDGET_S:-300}" --steps "${STEPS:-}" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
grep -v "^   {" "$OUT/bench.log" | tail -30
[ "${TESTS_S:-170}" = 0 ] || timeout "${TESTS_S:-170}" python3 -m pytest tests/integration/test_hf_gpu.py -q -p no:cacheprovider -rs \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$?"
tail -25 "$OUT/tests.log"
