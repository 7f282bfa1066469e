#!/usr/bin/env bash
# make demo: the whole path on the local engine, in build/demo (your models/ and keys/ are not touched).
set -euo pipefail
cd "$(dirname "$0")/.."
TFSHIP=${TFSHIP:-.venv/bin/tfship}
PY=${PY:-.venv/bin/python}
DEMO=build/demo
GRPC_PORT=${GRPC_PORT:-8500}
REST_PORT=${REST_PORT:-8501}
rm -rf "$DEMO/models" "$DEMO/report"
mkdir -p "$DEMO"

step() { printf '\n== %s\n' "$*" >&2; }

step "1/5 train the example CNN on scikit-learn's digits"
"$PY" examples/train_digits.py

step "2/5 demo signing key"
[ -f "$DEMO/keys/signing_key.pem" ] || "$TFSHIP" keys generate --out "$DEMO/keys"

step "3/5 export: SavedModel + TFLite (float32, float16, dynamic) + ONNX, parity-checked and signed"
"$TFSHIP" export examples/build/digits_cnn.h5 --name digits --repo "$DEMO/models" \
  --samples examples/build/digits_samples.npz --tflite-quantize float16,dynamic \
  --sign-key "$DEMO/keys/signing_key.pem"

step "4/5 serve on the local engine (verifies the signature first)"
"$TFSHIP" serve up --repo "$DEMO/models" --engine local --grpc-port "$GRPC_PORT" --rest-port "$REST_PORT" \
  --public-key "$DEMO/keys/signing_key.pub" --detach
trap '"$TFSHIP" -q serve down --repo "$DEMO/models" >/dev/null || true' EXIT

step "5/5 validate over gRPC against the golden set"
"$TFSHIP" validate --target "127.0.0.1:$GRPC_PORT" --model digits \
  --golden "$DEMO/models/digits/1/golden.npz" --report "$DEMO/report"
