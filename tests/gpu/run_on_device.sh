#!/usr/bin/env bash
# The GPU tier on a CUDA machine where rayalign is not installed (the project's lent H200: python3 with torch,
# transformers, peft, pyarrow, pandas; no Ray, pydantic, datasets or openai, and no network). Those missing
# packages travel as one archive, .gpubundle/site.tar.xz (cp312 wheels unpacked with `pip install --target`,
# Ray's jars/rllib/llm/dashboard build stripped; see README "GPU path"), unpacked to /tmp/site.
#   bash tests/gpu/run_on_device.sh            # logs and the measured numbers go to $OUT (default /tmp/gpu-out)
set -o pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
if [ -f .gpubundle/site.tar.xz ]; then tar xJf .gpubundle/site.tar.xz -C /tmp/site || exit 1; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export RAYALIGN_GPU_REPORT=$OUT/report.jsonl
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print(", ".join(f"{d} {md.version(d)}" for d in ("ray", "transformers", "peft", "datasets", "pyarrow", "pydantic",
                                                 "huggingface-hub", "tokenizers", "safetensors")))
PY
timeout "${PYTEST_LIMIT_S:-300}" python3 -m pytest tests/gpu -q -p no:cacheprovider --durations=0 --timeout=150
status=$?
echo "pytest exit $status after $((SECONDS - start)) s"
if [ "$status" = 0 ] && [ "${BENCH:-1}" = 1 ]; then
  timeout "${BENCH_LIMIT_S:-120}" python3 benchmarks/train_vs_trl.py --gpu --steps 25 --out "$OUT/train_gpu.json"
  echo "benchmark exit $? after $((SECONDS - start)) s"
fi
echo "== report"; cat "$RAYALIGN_GPU_REPORT" 2>/dev/null
tar czf "$OUT/raylogs.tgz" -C /tmp/ray/session_latest logs 2>/dev/null
exit $status
