#!/usr/bin/env bash
# On the GPU machine (see gpu_bundle.sh): install the carried wheels, then the report into $OUT.
#
# The device call, word for word (after `bash scripts/gpu_bundle.sh` here, once per session):
#   run   command: bash scripts/gpu_run.sh   carry: [".whl", ".gl"]   timeout_s: 540
# The report's steps are time-boxed to under 480 s in all (scripts/gpu_report.py, STEPS), so this
# call ends inside its 540 s with the wheels installed; the JSON and markdown under $OUT are
# rewritten after every step.  Commit them under benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --no-index --find-links .whl pycocotools filelock hypothesis faster-coco-eval \
    || echo "gpu_run: some wheels did not install; the steps that need them will say so"
export GNCONVERT_SHARED="$PWD/.gl" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python scripts/gpu_report.py --out "${OUT:-benchmarks/results}" "$@"
