#!/usr/bin/env bash
# Regenerate the Python modules of modelport's .proto files (commit them with the .proto).
# Needs the grpc extra (grpcio-tools); run after changing src/modelport/server/grpc/proto/*.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
python=".venv/bin/python"
[ -x "$python" ] || python="${PYTHON:-python3}"
# Paths from src/ make the imports inside the generated modules absolute
# (modelport.server.grpc.proto...), so they work from the installed package.
"$python" -m grpc_tools.protoc -I src \
  --python_out=src --pyi_out=src --grpc_python_out=src \
  src/modelport/server/grpc/proto/grpc_predict_v2.proto
# The repository extension's messages (no service of their own: see the file).
"$python" -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
  src/modelport/server/grpc/proto/grpc_repository.proto
# A private descriptor pool: tritonclient and the KServe SDK register the same inference.*
# names in protobuf's default pool, and one process could then not import both them and us.
for module in src/modelport/server/grpc/proto/grpc_predict_v2_pb2.py \
  src/modelport/server/grpc/proto/grpc_repository_pb2.py; do
  sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/'\
'# A private pool: tritonclient and the KServe SDK register the same inference.* names in the\n'\
'# default pool; sharing it, one process could not import both them and modelport.\n'\
'POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' "$module"
  grep -q '^DESCRIPTOR = POOL.AddSerializedFile(' "$module" || {
    echo "gen_proto.sh: the private-pool edit did not apply to $module; protoc's output changed" >&2
    exit 1
  }
done
echo "generated: $(ls src/modelport/server/grpc/proto/*_pb2*.py* | tr '\n' ' ')"
