#!/usr/bin/env bash
# The GPU check, one command: model alone at useful batch sizes (AMP: the predictor autocasts
# on CUDA), torch.compile against eager, and the pipeline on the sample slide; prints tiles/s,
# GPU busy fraction and peak GPU memory, in under 8 minutes on a CUDA machine.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # JSON per part in OUT_DIR (default benchmarks/results)
#
# Without CUDA it runs the same parts at the quick sizes on CPU (a check of the script itself)
# and says so. Each part has its own time limit, so one slow part cannot eat the others'.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
stamp="$(date +%Y%m%d-%H%M%S)"
status=0

part() {  # part NAME LIMIT_S ARGS...: one benchmark run, limited, its JSON in $OUT
  local name="$1" limit="$2"; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$PY" -m benchmarks.run "$@" --json "$OUT/gpu-$stamp-$name.json" || { echo "gpu.sh: part $name failed or ran out of time (exit $?)"; status=1; }
}

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu.sh: CUDA on {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,utilization.gpu,memory.used --format=csv,noheader
  part model 150 --device cuda --only model --batch-sizes 8,32,64,128 --min-tiles 256
  part compile 150 --device cuda --only engines --engines eager,compile --engine-tiles 64 --engine-rounds 2 --no-validate
  part pipeline 150 --device cuda --only pipeline --batch-size 16 --workers 8
else
  echo "gpu.sh: torch sees no CUDA device: CPU fallback at the quick sizes (this checks the script, its figures are not GPU figures)"
  part model 150 --device cpu --quick --only model
  part compile 150 --device cpu --quick --only engines --engines eager,compile --no-validate
  part pipeline 150 --device cpu --quick --only pipeline
fi

"$PY" - "$OUT" "$stamp" <<'PY'
import json, sys
from pathlib import Path
out, stamp = Path(sys.argv[1]), sys.argv[2]
print("\ngpu.sh summary")
for name in ("model", "compile", "pipeline"):
    f = out / f"gpu-{stamp}-{name}.json"
    if not f.is_file():
        print(f"  {name}: no result"); continue
    r = json.loads(f.read_text())["results"]
    for row in r.get("model", []):
        print(f"  model batch {row['batch']}: {row['tiles_per_second']} tiles/s, GPU busy {row['gpu_busy_fraction']}, peak GPU alloc {row.get('cuda_max_memory_allocated_mb')} MB")
    for row in r.get("engines", {}).get("rows", {}).values():
        print(f"  engine {row['engine']}: {row['seconds_per_tile']} s/tile, x{row['speedup_vs_eager']} eager (setup {row['setup_seconds']} s)")
    for why in r.get("engines", {}).get("skipped", {}).items():
        print(f"  engine skipped: {why}")
    p = r.get("pipeline")
    if p:
        print(f"  pipeline {p['roi']}: {p['tiles_per_second']} tiles/s, {p['wall_seconds']} s wall, GPU busy {p['gpu_busy_fraction']}, peak GPU alloc {p.get('cuda_max_memory_allocated_mb')} MB")
PY
exit $status
