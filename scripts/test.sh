#!/usr/bin/env bash
# keel's test command: on a fresh Debian machine it installs what the tests
# need (Mesa lavapipe for wgpu, the Python references, SmolLM2), then runs
# the whole suite with every environment-dependent test switched on.
set -euo pipefail
cd "$(dirname "$0")/.."

# Vulkan on the CPU (Mesa lavapipe), so wgpu tests run without a GPU; and
# Chromium, which renders the drift report's HTML in a test.
packages=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || packages+=(mesa-vulkan-drivers libvulkan1)
command -v chromium >/dev/null || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/keel-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# HF transformers, PEFT and the gguf package: the references tests compare against.
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-ref.txt

scripts/fetch_smollm2.sh >/dev/null

# llama.cpp, through llama-cpp-python, which builds it from source (15-25
# minutes cold; pip caches the wheel). It builds while cargo does.
llama_log="$(mktemp)"
if ! python3 -c "import llama_cpp" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check cmake ninja
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 \
    python3 -m pip install --quiet --disable-pip-version-check "llama-cpp-python==0.3.36" >"$llama_log" 2>&1 &
  llama_pid=$!
fi

# Keep the build outside the clone so reruns stay warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo test --workspace --no-run "$@"
if [ -n "${llama_pid:-}" ] && ! wait "$llama_pid"; then
  cat "$llama_log" >&2
  echo "installing llama-cpp-python failed" >&2
  exit 1
fi

export KEEL_TEST_WGPU=1 KEEL_REQUIRE_SMOLLM2=1 KEEL_TEST_PYTHON=1 KEEL_TEST_LLAMA_CPP=1 KEEL_TEST_BROWSER=1
cargo test --workspace "$@"

# The Burn-free fuzz targets briefly under libFuzzer (nightly Rust and
# cargo-fuzz; the model targets would need Burn built again with nightly).
# Every target's committed corpus was already replayed on stable above.
# KEEL_CI_FUZZ_SECONDS=0 skips it.
fuzz_seconds="${KEEL_CI_FUZZ_SECONDS:-10}"
if [ "$fuzz_seconds" -gt 0 ] && rustup toolchain list | grep -q nightly; then
  command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
  export KEEL_FUZZ_TARGET_DIR="${KEEL_FUZZ_TARGET_DIR:-$HOME/.cache/keel-fuzz-target}"
  for target in gguf recipe tokenizer_json chat_template; do
    mkdir -p "fuzz/corpus/$target"
    (cd fuzz && CARGO_TARGET_DIR="$KEEL_FUZZ_TARGET_DIR" cargo +nightly fuzz run -O "$target" \
      "corpus/$target" "seeds/$target" "replay/$target" -- -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
      -max_len=1048576 >/dev/null 2>"/tmp/keel-fuzz-$target.log") \
      || { tail -40 "/tmp/keel-fuzz-$target.log" >&2; echo "fuzz target $target failed" >&2; exit 1; }
  done
fi
