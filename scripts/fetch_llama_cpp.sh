#!/usr/bin/env bash
# Fetch llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py + conversion/ + gguf-py/) from the
# PyPI sdist of `llama-cpp-python`, which vendors llama.cpp (GitHub and the HF hub are not needed).
# Nothing is compiled: only those Python files are unpacked.
# Caches them under ${KEEL_CACHE:-$HOME/.cache/keel}/llama.cpp/llama-cpp-python-$VERSION/ and prints
# that folder as the last line on stdout. Skips the download if present.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# sha256 of llama_cpp_python-0.3.36.tar.gz (checked after download; override/empty to skip).
SHA256="${LLAMA_CPP_PYTHON_SHA256-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}"
CACHE="${KEEL_CACHE:-$HOME/.cache/keel}"
DEST="$CACHE/llama.cpp/llama-cpp-python-$VERSION"
PY="${PYTHON:-python3}"

if [ -s "$DEST/convert_hf_to_gguf.py" ]; then
  echo "already present: $DEST" >&2
  echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE/llama.cpp"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "downloading llama-cpp-python==$VERSION (sdist, 77 MB) from PyPI ..." >&2
# --no-binary only for this package: pip still prepares the sdist's metadata, which needs its build
# backend (scikit-build-core) as a wheel, not built from source. Nothing of llama.cpp is compiled.
"$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$TMP" \
  "llama-cpp-python==$VERSION" >&2
SDIST="$(ls "$TMP"/llama_cpp_python-*.tar.gz | head -n1)"
if [ -n "$SHA256" ] && command -v sha256sum >/dev/null; then
  GOT="$(sha256sum "$SDIST" | cut -d' ' -f1)"
  if [ "$GOT" != "$SHA256" ]; then
    echo "sha256 mismatch: got $GOT, want $SHA256" >&2
    exit 1
  fi
fi

# Unpack only the converter (python tarfile: no dependency on GNU tar wildcards).
"$PY" - "$SDIST" "$TMP/x" <<'PYEOF'
import sys, tarfile
sdist, out = sys.argv[1], sys.argv[2]
want = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/",
        "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/LICENSE")
with tarfile.open(sdist) as t:
    members = [m for m in t.getmembers()
               if m.isfile() and any(m.name.split("/", 1)[-1].startswith(w) for w in want)]
    if not any(m.name.endswith("/convert_hf_to_gguf.py") for m in members):
        sys.exit("no vendor/llama.cpp/convert_hf_to_gguf.py inside " + sdist)
    for m in members:
        m.name = m.name.split("/vendor/llama.cpp/", 1)[1]
        t.extract(m, out, filter="data")
    print(f"{len(members)} files", file=sys.stderr)
PYEOF
# Move into place under a temp name then rename, so an interrupted run never leaves a partial copy.
rm -rf "$DEST.partial"
mv "$TMP/x" "$DEST.partial"
mv "$DEST.partial" "$DEST"
echo "unpacked to $DEST" >&2
echo "$DEST"
