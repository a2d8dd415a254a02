#!/usr/bin/env bash
# GPU figures in one call (about 8 minutes on one H200): the LLaVA-1.5-7B shape (every method at 192 / 128 / 64,
# sdpa with compiled decoding and transformers' own generate beside it, then eager for the kept-index comparison,
# batch 1 and 8) and the LLaVA-NeXT-7B shape (2,880 visual tokens: unpruned, SparseVLM and FasterVLM at two
# budgets), fp16, random weights written in the real checkpoint format and loaded through load_pretrained_model.
#
#   bash scripts/bench/gpu.sh                # on the GPU machine; JSON + markdown + PNG per shape in $OUT
#   SMOKE=1 bash scripts/bench/gpu.sh        # the same steps at toy size (CPU, float32, one run): checks the script
#
# OUT (default assets/bench): where results go; WORK: where the random checkpoints go (default: /dev/shm when it
# exists, deleted after each shape). Needs transformers 5.23 (pyproject.toml's pins); on the device machine carry it
# as a wheel (.whl) and put it first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-assets/bench}
if [ -d /dev/shm ]; then WORK_ROOT=/dev/shm; else WORK_ROOT=${TMPDIR:-/tmp}; fi
WORK=${WORK:-$(mktemp -d "$WORK_ROOT/llava-bench.XXXXXX")}
mkdir -p "$OUT"
V15_METHODS=()  # every row
if [ "${SMOKE:-0}" = 1 ]; then  # CPU compiles are slow: a row of each kind (in-LLM multi-stage, in-LLM, pre-LLM)
  COMMON=(--smoke --dtype float32)
  V15_METHODS=(--methods none sparsevlm-2_0-64 fastv-64 fastervlm-64)
else
  COMMON=(--dtype float16 --repeats 3 --warmup 1 --new-tokens 32)
fi
export PYTHONUNBUFFERED=1
start=$SECONDS
stamp() { echo "[gpu.sh] $(( SECONDS - start )) s: $*"; }

stamp "environment"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

stamp "LLaVA-1.5-7B shape: sdpa (+ compiled decode, + transformers row), then eager"
python -m llava.bench --shape llava-v1.5-7b "${COMMON[@]}" "${V15_METHODS[@]}" --attn sdpa eager --compile \
  --batches 1 8 --workdir "$WORK/v15" --out "$OUT"
rm -rf "$WORK/v15"

stamp "LLaVA-NeXT-7B shape: unpruned, SparseVLM v1.5 / v2.0 and FasterVLM at 640 and 320"
python -m llava.bench --shape llava-v1.6-7b "${COMMON[@]}" --attn sdpa --batches 1 --no-transformers \
  --methods none sparsevlm-1_0-640 sparsevlm-2_0-640 fastervlm-640 sparsevlm-1_0-320 sparsevlm-2_0-320 fastervlm-320 \
  --workdir "$WORK/v16" --out "$OUT"
rm -rf "$WORK/v16"
stamp "done"
