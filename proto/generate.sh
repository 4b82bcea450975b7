#!/bin/sh
# Regenerates the checked-in Python code for proto/memagent/v1/memagent.proto.
# Usage: [PYTHON=.venv/bin/python] proto/generate.sh [OUTPUT_ROOT]   (default: the repository root, i.e. memagent/v1/)
# PYTHON is the interpreter that has grpcio-tools (default: python3 on PATH).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
cd "$root"
"${PYTHON:-python3}" -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
    proto/memagent/v1/memagent.proto
