#!/usr/bin/env bash
# Re-vendor onnxruntime-web's WASM runtime into the package (modelport export web ships it).
# Only the three files of the plain WASM build: its WebGPU build needs another 29 MB wasm, which
# users bring (export web --webgpu node_modules/onnxruntime-web); its sha256s are pinned here.
# Usage: scripts/vendor_onnxruntime_web.sh [VERSION]   (npm verifies the tarball's integrity)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-1.31.1}"
target=src/modelport/export/assets/onnxruntime-web
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar xzf ./*.tgz)
rm -rf "$target" && mkdir -p "$target"
for f in ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
  cp "$work/package/dist/$f" "$target/$f"
done
echo "$version" >"$target/VERSION"
(cd "$target" && sha256sum ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm >SHA256SUMS)
(cd "$work/package/dist" && sha256sum ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs \
  ort-wasm-simd-threaded.asyncify.wasm) >"$target/WEBGPU_SHA256SUMS"
cat >"$target/LICENSE" <<'LICENSE'
onnxruntime-web (https://www.npmjs.com/package/onnxruntime-web), vendored unmodified.

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LICENSE
echo "vendored onnxruntime-web $version into $target"
