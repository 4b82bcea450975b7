#!/bin/sh
# Regenerates the checked-in Python code for proto/memagent/v1/memagent.proto.
# Usage: proto/generate.sh [OUTPUT_ROOT]   (default: the repository root, i.e. memagent/v1/)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
cd "$root"
python -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
    proto/memagent/v1/memagent.proto
