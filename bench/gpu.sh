#!/usr/bin/env bash
# The GPU figures of bench/encode.py in one call on a lent GPU machine (see README, "GPU"): B/16 at 224 and
# NaFlex 256, L/16 256, So400m/14 224 and NaFlex 256; generated checkpoints, bf16. Each line is printed as
# it is measured, so a run cut short still leaves what it got. Where the machine lacks this project's
# pinned packages (or torchvision, for decoding JPEGs with nvJPEG), wheels carried in .whl/ are installed
# first (pip download … -d .whl, see README).
#   [COMPILE=1] [SIZES=base,large,so400m] bash bench/gpu.sh [IMAGES=4096]
set -u
images=${1:-4096}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers, faiss, PIL; print('torch', torch.__version__, '| transformers', transformers.__version__, '| faiss', faiss.__version__, '| pillow', PIL.__version__, '|', torch.cuda.get_device_name())" || exit 1
python3 -c "import torchvision; print('torchvision', torchvision.__version__, '(nvJPEG decoding)')" 2>/dev/null \
    || echo "no torchvision: JPEGs are decoded by PIL on the CPU (pip download torchvision matching torch into .whl/)"
# COMPILE=1: every line again with torch.compile (load_model(compile=True)); about a minute more per model.
# On the H100, 2026-11-26, B/16 fixed ran at 11,150 img/s compiled against 7,146 eager in one run; NaFlex
# and the index builds gained nothing.
python3 bench/encode.py --device cuda --throughput --arch fixed,naflex --size "${SIZES:-base,large,so400m}" \
    --images "$images" $([ "${COMPILE:-0}" = 1 ] && echo --compile)
