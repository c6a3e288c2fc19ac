#!/usr/bin/env bash
# The CPU kernels alone, at every CPU tier this machine runs (KEEL_CPU) and,
# for a bf16 weight, by every method it has (KEEL_BF16): gemm's f32 (what
# Burn's flex backend calls), keel-gemm's bf16 product and its product with a
# Q8_0 / Q4_0 weight on SmolLM2-135M's shapes for 1024 tokens, and keel-gemm's
# causal attention on SmolLM2's heads.
# Writes docs/performance-kernels.md.
#
#   benchmarks/kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
has() { [[ " $flags " == *" $1 "* ]]; }
runs=("baseline widen")
if has avx2 && has fma; then runs+=("avx2 widen"); fi
if has avx512f && has avx512bw && has avx512vl; then runs+=("avx512 widen"); fi
if has avx512_bf16; then runs+=("avx512bf16 widen" "avx512bf16 dot"); fi
cargo bench --quiet -p keel-gemm --bench gflops --no-run 2>/dev/null
{
  echo "# Performance: CPU kernels"
  echo
  echo "Written by \`benchmarks/kernels.sh\` from its own run; do not edit by hand."
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores. GFLOPS of \`out[m, n] = x[m, k] · W\`:"
  echo "gemm 0.19 in f32 (Burn's flex backend), and keel-gemm with a bf16 \`W\` stored \`[k, n]\` (x·W, forward)"
  echo "or \`[n, k]\` (x·Wᵀ, the input gradient and the tied LM head); keel-gemm with \`W\` kept in GGUF blocks"
  echo "(\`[n, k]\`, ggml's layout, so x·Wᵀ is the forward product and dy·W the input gradient, \`dy[m, n]\`),"
  echo "dequantized a panel at a time inside the parallel loop; then keel-gemm's causal attention"
  echo "(forward, and backward with its recomputation), counting only the unmasked half of each product."
  echo "One table per keel-gemm tier (\`KEEL_CPU\`) and bf16 method (\`KEEL_BF16\`) this CPU runs. gemm picks its"
  echo "own instructions from the CPU, not from \`KEEL_CPU\`: its column is this CPU's best in every table, and the"
  echo "widened bf16 product, which multiplies through gemm, shows keel-gemm's lower tiers only in its widening."
  for run in "${runs[@]}"; do
    read -r cpu bf16 <<<"$run"
    echo
    echo "\`KEEL_CPU=$cpu KEEL_BF16=$bf16\`:"
    echo
    echo '```'
    KEEL_CPU="$cpu" KEEL_BF16="$bf16" cargo bench --quiet -p keel-gemm --bench gflops 2>/dev/null
    echo '```'
  done
  echo
  echo "Command: \`KEEL_CPU=<tier> KEEL_BF16=<method> cargo bench -p keel-gemm --bench gflops\`"
} > docs/performance-kernels.md
cat docs/performance-kernels.md
