#!/usr/bin/env bash
# On the GPU machine (see gpu_bundle.sh): install the carried wheels, then the report into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --no-index --find-links .whl pycocotools filelock hypothesis faster-coco-eval \
    || echo "gpu_run: some wheels did not install; the steps that need them will say so"
export GNCONVERT_SHARED="$PWD/.gl" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python scripts/gpu_report.py --out "${OUT:-benchmarks/results}" "$@"
