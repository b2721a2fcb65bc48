#!/bin/bash
# VNN-COMP: install_tool.sh v1   (run once; installs certify and its dependencies, CPU torch)
set -e
VERSION_STRING=v1
if [ "$1" != "$VERSION_STRING" ]; then
    echo "expected first argument (version string) '$VERSION_STRING', got '$1'"; exit 1
fi
TOOL_DIR=$(cd "$(dirname "$0")/.." && pwd)
python3 -m pip install --extra-index-url https://download.pytorch.org/whl/cpu -e "$TOOL_DIR[test]"
python3 -c "import certify, bounds.bab, onnxruntime" && echo "certify installed"
