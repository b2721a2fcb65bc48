#!/bin/bash
# VNN-COMP: run_instance.sh v1 <category> <onnx> <vnnlib> <result_file> <timeout_s>
# Writes the result file: sat (+ counterexample) / unsat / timeout / unknown / error.
VERSION_STRING=v1
if [ "$1" != "$VERSION_STRING" ]; then
    echo "expected first argument (version string) '$VERSION_STRING', got '$1'"; exit 1
fi
CATEGORY=$2; ONNX_FILE=$3; VNNLIB_FILE=$4; RESULTS_FILE=$5; TIMEOUT=$6
echo "running certify on category '$CATEGORY', onnx '$ONNX_FILE', vnnlib '$VNNLIB_FILE', timeout $TIMEOUT s"
export OMP_WAIT_POLICY=PASSIVE
python3 -m certify vnnlib "$ONNX_FILE" "$VNNLIB_FILE" --timeout "$TIMEOUT" --out "$RESULTS_FILE" --overwrite
STATUS=$?
if [ $STATUS -ne 0 ] && [ ! -s "$RESULTS_FILE" ]; then
    echo "error" > "$RESULTS_FILE"
fi
exit 0
