#!/bin/bash
# VNN-COMP: prepare_instance.sh v1 <category> <onnx> <vnnlib>
# No analysis here (competition rule): check that the files load and parse; a non-zero exit
# tells the harness to skip the instance.
VERSION_STRING=v1
if [ "$1" != "$VERSION_STRING" ]; then
    echo "expected first argument (version string) '$VERSION_STRING', got '$1'"; exit 1
fi
CATEGORY=$2; ONNX_FILE=$3; VNNLIB_FILE=$4
echo "preparing certify for category '$CATEGORY', onnx '$ONNX_FILE', vnnlib '$VNNLIB_FILE'"
export OMP_WAIT_POLICY=PASSIVE
python3 - "$ONNX_FILE" "$VNNLIB_FILE" <<'PY'
import sys
from certify.models import load_model
from certify.spec import vnnlib
net = load_model(sys.argv[1])
vnnlib.load(sys.argv[2], net.input_size, net.output_size)
PY
