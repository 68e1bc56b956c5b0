#!/usr/bin/env bash
# GPU checks in one run, for a machine with CUDA (e.g. the device tool's H200):
#   1. the GPU-marked tests (tests/test_gpu.py, CUDA resume and OOM in tests/ml): ml.train on CUDA, and a short
#      job through a real Celery worker that must report a CUDA device;
#   2. training throughput of seed_cnn and the default network with bf16 autocast and
#      channels_last (bench/throughput.py), on CIFAR-sized data.
# Needs the project's Python packages (PY, default .venv/bin/python) and, for the worker test,
# Redis on REDIS_URL; it starts a local redis-server when one is installed and none answers.
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1
status=0

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

if ! "$PY" -c 'import redis, os; redis.Redis.from_url(os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0")).ping()' 2>/dev/null; then
  command -v redis-server >/dev/null && redis-server --daemonize yes --save "" --appendonly no >/dev/null
fi

echo "== GPU-marked tests"
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/ml/test_checkpoint.py tests/ml/test_oom.py || status=1

echo "== throughput (bf16 autocast + channels_last on CUDA)"
"$PY" bench/throughput.py --device cuda --images 50000 --epochs 3 --batch-size 512 || status=1
exit $status
