#!/usr/bin/env bash
# Regenerate dataplane/api/moor_pb2*.py from moor.proto (needs grpcio-tools: pip install grpcio-tools).
# The generated modules are committed, so nodes need only grpcio and protobuf at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
${PYTHON:-.venv/bin/python} -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. dataplane/api/moor.proto
