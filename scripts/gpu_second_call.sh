#!/usr/bin/env bash
# The second prepared GPU call, after scripts/gpu_check.sh (whose ten minutes are spoken for):
# torch.compile with every method on CUDA, then the end-to-end pipeline benchmark.
#
#   bash scripts/gpu_second_call.sh       # from the repository root; at most 260 s
#
# Sized to fit a 15-minute device budget after gpu_check.sh (590 s) and a machine start: the
# compile check is capped at 90 s, the pipeline benchmark runs Wan 2.1 1.3B at 480p only (80 s of
# timing). With more time, run benchmarks/bench_pipeline.py without --cases.
#
# Last, the per-call token-reordering share of a forward (benchmarks/bench_order.py, 60 s cap).
#
# Writes $OUT/compile_check.md, $OUT/pipeline_gpu.md, $OUT/order_gpu.md and $OUT/second_call.log ($OUT defaults to a
# new temporary directory). Exit status: non-zero if the compile check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_second.XXXXXX")}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# Inductor compiles the block graph once; the other methods hit its cache (one opaque attention op).
echo "## compile check (regional, inductor, fullgraph)" | tee "$OUT/second_call.log"
PYTHONUNBUFFERED=1 timeout 90 python3 scripts/gpu_compile_check.py cuda 2>&1 \
  | grep -v -i warn | tee "$OUT/compile_check.md" | tail -n 14
STATUS=${PIPESTATUS[0]}

echo "## pipeline benchmark (eager)" | tee -a "$OUT/second_call.log"
PYTHONUNBUFFERED=1 timeout 100 python3 benchmarks/bench_pipeline.py --cases 480p --budget 80 --out "$OUT" 2>&1 \
  | grep "^|" | tee -a "$OUT/second_call.log" | tail -n 12

echo "## token reordering per call vs a forward" | tee -a "$OUT/second_call.log"
PYTHONUNBUFFERED=1 timeout 60 python3 benchmarks/bench_order.py --untrained --repeats 3 --out "$OUT" 2>&1 \
  | grep "^|" | tee -a "$OUT/second_call.log"
exit "$STATUS"
