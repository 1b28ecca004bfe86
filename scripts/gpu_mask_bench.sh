#!/bin/bash
# The GPU figures of docs/benchmarks-masks.md ("On a GPU"): `ood-monitor bench masks` on CUDA at the shipped
# 128 px (quality + rate) and at 256 px (the shipped architectures rebuilt untrained: rate only), beside
# the same machine's CPU. Runs where the `ood-monitor` venv exists or, on a bare GPU machine with torch,
# from the repository root with PYTHONPATH set; DATA is an image folder with object masks (default
# demo_data/images/test), OUT where the JSON reports and logs go.
set -u
DATA=${DATA:-demo_data/images/test}
OUT=${OUT:-gpu_masks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"
bench() {  # name, then bench masks options
    local name=$1; shift
    echo "=== $name: $*"
    timeout 150 python3 -m ood_monitor.cli.main bench masks --data "$DATA" --frames 48 --seconds 15 \
        --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "^\s*$"
}
bench cuda128 --device cuda --backend torch --analysis-device cuda
bench cuda128-fp16 --device cuda --precision fp16 --analysis-device cuda
bench cuda256 --device cuda --backend torch --size 256 --analysis-device cuda --camera-hz 60
bench cuda256-fp16 --device cuda --precision fp16 --size 256 --analysis-device cuda --camera-hz 60
bench cuda256-cpu-analysis --device cuda --backend torch --size 256 --analysis-device cpu --camera-hz 60
bench cpu128 --device cpu --analysis-device cpu
