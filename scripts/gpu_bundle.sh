#!/usr/bin/env bash
# Prepare what the GPU machine lacks, in two folders git ignores and the device call carries:
#   .whl/  wheels for its Python 3.12 (it has torch, torchvision, triton, numpy, opencv,
#          safetensors, PyYAML, click, tqdm, requests and pytest, and no network)
#   .gl/   the golden files the report needs (golden/ as in ../shared) and the commit measured
# Then, with the device tool:  run  bash scripts/gpu_run.sh   carry [".whl", ".gl"]   timeout_s 540
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${GNCONVERT_SHARED:-../shared}"
rm -rf .whl .gl
mkdir -p .whl .gl/golden
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl pycocotools filelock hypothesis sortedcontainers attrs faster-coco-eval
cp -r "$shared/golden/detectron" "$shared/golden/images" "$shared/golden/cfg" "$shared/golden/inventory" \
      "$shared/golden/seeded_weights.py" "$shared/golden/README.md" .gl/golden/
git rev-parse HEAD > .gl/commit
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then sed -i 's/$/+dirty/' .gl/commit; fi
du -sh .whl .gl
