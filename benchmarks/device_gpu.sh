#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU (never in CI, never in pyproject.toml).
#
# 1. torch with CUDA: this uses the python on PATH if its torch sees a GPU. Otherwise, with
#    CERTIFY_CUDA_INDEX set (e.g. https://download.pytorch.org/whl/cu128), it makes a separate
#    virtual environment at $CERTIFY_CUDA_VENV (default /tmp/certify-cuda) and installs the CUDA
#    build of the pinned torch version there, then this package (editable) beside it.
# 2. The device tests and the cross-engine self-check on the GPU:
#       pytest tests/test_device.py (the CUDA-only cases run) and certify check --device cuda.
# 3. benchmarks/device.py on cpu and cuda side by side (full setting unless ARGS says otherwise),
#    results in benchmarks/results/device-cuda/.
#
#    bash benchmarks/device_gpu.sh                 # full setting (BaB 60 s per instance, N = 100k)
#    ARGS=--quick bash benchmarks/device_gpu.sh    # minutes
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH="$PWD"
PY=${PYTHON:-python}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    if [ -z "${CERTIFY_CUDA_INDEX:-}" ]; then
        echo "torch here has no CUDA GPU; set CERTIFY_CUDA_INDEX to a PyTorch CUDA wheel index to install one" >&2
        exit 2
    fi
    VENV=${CERTIFY_CUDA_VENV:-/tmp/certify-cuda}
    VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install "torch==$VERSION" --index-url "$CERTIFY_CUDA_INDEX"
    "$VENV/bin/pip" install -e .
    PY="$VENV/bin/python"
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
"$PY" -m pytest -q tests/test_device.py
"$PY" -m certify check digits-mlp --count 5 --device cuda
"$PY" benchmarks/device.py ${ARGS:-} --out benchmarks/results/device-cuda
