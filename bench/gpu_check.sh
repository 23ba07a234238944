#!/usr/bin/env bash
# The checks only a GPU can make, in one run of at most 9 min 50 s (each part has its own time
# limit; a short GPU lease allows that): the step against PyTorch with TF32 in both frameworks, then
# with the VGG layers in bfloat16 in both (--compute-dtype), the multipass step with batched Grams
# (--multipass-grams batched), what bfloat16 does to a stylized picture
# (bench/compare_dtype.py), and the demo's wall time and compiled programs, twice with one compile
# cache (the second run loads the first's programs). (Each framework's own
# default precision: `PRECISIONS=default bash bench/gpu_check.sh`.)
#
#   bash bench/gpu_check.sh [OUTDIR]     # default OUTDIR: gpu_check
#   QUICK=1 bash bench/gpu_check.sh      # tiny sizes: try the script itself on a CPU first
#
# Writes OUTDIR/log.txt, OUTDIR/rows.jsonl (bench_step rows; `python bench/bench_step.py --table
# OUTDIR/rows.jsonl` prints them), OUTDIR/dtype/ (both pictures and compare_dtype.json) and
# OUTDIR/demo/ (the demo's pictures and metrics). Every part has
# its own time limit, so one that hangs does not cost the others. Needs the default VGG16 weights
# (weights/vgg16_imagenet.npz) and the selfie model (weights/selfie_segmentation.npz) in place.
set -o pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
mkdir -p "$out"
log=$out/log.txt
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
bench="python3 bench/bench_step.py --one-process --malloc glibc --jsonl $out/rows.jsonl"
if [ -n "$QUICK" ]; then
  sizes_small="64" sizes_large="96" demo_size=64 demo_steps=3 steps=3 peak=512 dtype_size=64 dtype_steps=5
else
  sizes_small="512" sizes_large="2048" demo_size=256 demo_steps=50 steps=15 peak=8192 dtype_size=512 dtype_steps=200
fi
start=$(date +%s)
mark() { echo "## $(( $(date +%s) - start )) s: $*" | tee -a "$log"; }

mark environment
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee -a "$log"

for variant in ${PRECISIONS:-tf32} "tf32 bfloat16"; do
  set -- $variant
  precision=$1 dtype=${2:-float32}
  mark "step table, precision $precision, compute dtype $dtype"
  timeout 110 $bench --peak-n $peak --precision $precision --compute-dtype $dtype --sizes $sizes_small --segments 2 \
    --approaches multipass blended locality localized --steps $steps --warmup 3 2>&1 | grep -v '^{' | tee -a "$log"
  timeout 90 $bench --peak-n $peak --precision $precision --compute-dtype $dtype --sizes $sizes_large --segments 2 \
    --approaches multipass locality --steps $steps --warmup 3 2>&1 | grep -v '^{' | tee -a "$log"
done

# The multipass step with its Grams as one batched product per tap (StepConfig.multipass_grams), to
# set against the table's multipass row (one product per image): the lever a GPU trace pointed to.
precision=${PRECISIONS:-tf32}; precision=${precision%% *}  # the first of the table's precisions
mark "multipass with batched Grams, precision $precision"
timeout 45 $bench --peak-n $peak --precision $precision --multipass-grams batched --sizes $sizes_small \
  --segments 2 --approaches multipass --steps $steps --warmup 3 2>&1 | grep -v '^{' | tee -a "$log"

mark "float32 against bfloat16 in one stylization, ${dtype_size} px, $dtype_steps steps"
timeout 50 python3 bench/compare_dtype.py --size $dtype_size --steps $dtype_steps -o "$out/dtype" 2>&1 | tee -a "$log"

# The demo twice with one compile cache, empty at first: the first run compiles (autotuning every
# convolution shape), the second loads what the first stored.
rm -rf "$out/compile_cache"
for run in first second; do
mark "demo, ${demo_size} px, $demo_steps steps per approach, $run run"
[ $run = first ] && limit=70 || limit=25
timeout $limit python3 - "$out/demo" "$demo_size" "$demo_steps" "$out/compile_cache" <<'EOF' 2>&1 | tr '\r' '\n' | grep -v ' step [0-9]*[1-9]/' | tee -a "$log"
import sys
import time

import jax.monitoring

from segstyle_jax.cli import main

compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: compiles.append(seconds) if event == "/jax/core/compile/backend_compile_duration" else None)
out, size, steps, cache = sys.argv[1:5]
t0 = time.perf_counter()
rc = main(["demo", "--size", size, "--steps", steps, "-o", out, "--compile-cache", cache])
print(f"demo: exit {rc}, {time.perf_counter() - t0:.1f} s, {len(compiles)} programs compiled or loaded from the cache "
      f"({sum(compiles):.1f} s in XLA's compile step)")
EOF
done
rm -rf "$out/compile_cache"
mark done
