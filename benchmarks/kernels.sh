#!/usr/bin/env bash
# The CPU kernels alone: gemm's f32 (what Burn's flex backend calls) and
# keel-gemm's AVX-512 BF16 kernel, on SmolLM2-135M's shapes for 1024 tokens,
# and keel-gemm's causal attention on SmolLM2's heads.
# Writes docs/performance-kernels.md.
#
#   benchmarks/kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
table="$(cargo bench --quiet -p keel-gemm --bench gflops 2>/dev/null)"
{
  echo "# Performance: CPU kernels"
  echo
  echo "Written by \`benchmarks/kernels.sh\` from its own run; do not edit by hand."
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores. GFLOPS of \`out[m, n] = x[m, k] · W\`:"
  echo "gemm 0.19 in f32 (Burn's flex backend), and keel-gemm with a bf16 \`W\` stored \`[k, n]\` (x·W, forward)"
  echo "or \`[n, k]\` (x·Wᵀ, the input gradient and the tied LM head); then keel-gemm's causal attention"
  echo "(forward, and backward with its recomputation), counting only the unmasked half of each product."
  echo
  echo '```'
  echo "$table"
  echo '```'
  echo
  echo "Command: \`cargo bench -p keel-gemm --bench gflops\`"
} > docs/performance-kernels.md
cat docs/performance-kernels.md
