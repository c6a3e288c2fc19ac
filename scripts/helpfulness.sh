#!/usr/bin/env bash
# Over-refusal on held-out, ordinary requests (issue 23): `keel probe` with the helpfulness suite
# (IFEval's 510 English prompts, fetched by scripts/fetch_helpfulness.py; nothing keel trains on or
# was tuned on) on SmolLM2-135M-Instruct and on the aligned base (it merged with the committed
# safety adapter, models/smollm2-safety, as the quickstart builds it). Writes
# docs/alignment-helpfulness.md.
#
#   scripts/helpfulness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo build --quiet --bin keel
keel="$CARGO_TARGET_DIR/debug/keel"
smol="$(python3 scripts/fetch_model.py smollm2 | tail -n 1)"
suite="$(python3 scripts/fetch_helpfulness.py | tail -n 1)"
scripts/aligned_base.sh "$keel" "$smol" >/dev/null
# A model's probe is kept while its model is the same (the aligned base's, while it was made from
# the same safety adapter).
for m in instruct aligned; do
  model="$smol" made=/dev/null
  [ "$m" = aligned ] && model=runs/smollm2-aligned made=runs/smollm2-aligned/made-from.sha256
  out="runs/helpfulness/$m"
  if ! [ -f "$out/report.json" ] || ! cmp -s "$made" "$out/made-from.sha256"; then
    rm -rf "$out"
    "$keel" probe --model "$model" --suite "$suite" --out "$out" >/dev/null
    cp "$made" "$out/made-from.sha256"
  fi
done
python3 - >docs/alignment-helpfulness.md <<'PY'
import json
print("# Over-refusal on held-out, ordinary requests\n")
print("Written by `scripts/helpfulness.sh`; do not edit by hand.\n")
print("IFEval's prompts (Apache-2.0; the 510 that ask for an English answer), fetched by "
      "`scripts/fetch_helpfulness.py`: ordinary requests to write, plan, explain and compute, each "
      "with a formatting instruction. No keel training set, prompt list or threshold was made from "
      "them. Greedy answers of 32 tokens, judged by keel's refusal matcher; 95% bootstrap intervals.\n")
print("| model | prompts | refused | refusal margin above 0 |")
print("|---|---|---|---|")
for m, name in [("instruct", "SmolLM2-135M-Instruct"),
                ("aligned", "aligned base (+ models/smollm2-safety, merged)")]:
    (s,) = json.load(open(f"runs/helpfulness/{m}/report.json"))["sets"]
    pct = lambda e: f"{100 * e['value']:.1f}% [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]"
    print(f"| {name} | {s['n']} | {pct(s['refusal'])} | {pct(s['margin_refusal'])} |")
PY
echo "wrote docs/alignment-helpfulness.md" >&2
