#!/usr/bin/env bash
# Instructions per cache hit of every flow, counted by callgrind (deterministic: the same binary
# and inputs give the same count whatever else the machine does). Each flow runs HITS hits
# inside `run_hits` of benches/profile_hits.rs; only that function is counted.
#
#   scripts/instructions-per-hit.sh            # all flows and the floor
#   HITS=50000 scripts/instructions-per-hit.sh client_credentials_readme_shape
#
# Prints one line per flow and records `instructions_per_hit.<flow>` for benches/report.
set -euo pipefail
cd "$(dirname "$0")/.."
hits=${HITS:-20000}
target=${CARGO_TARGET_DIR:-target}
cargo bench -p tokenwell-benches --bench profile_hits --no-run 2>/dev/null
bin=$(ls -t "$target"/release/deps/profile_hits-* | grep -v '\.d$' | head -1)
figures="$target/criterion/tokenwell-figures"
mkdir -p "$figures"
flows=("$@")
if [ ${#flows[@]} -eq 0 ]; then
  flows=(client_credentials_readme_shape client_credentials_scope_set on_behalf_of silent managed_identity floor)
fi
out=$(mktemp -d)
for flow in "${flows[@]}"; do
  FLOW=$flow HITS=$hits valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*run_hits*' --callgrind-out-file="$out/$flow.out" "$bin" >/dev/null 2>&1
  total=$(grep -E '^(summary|totals):' "$out/$flow.out" | head -1 | awk '{print $2}')
  per=$(( total / hits ))
  echo "$flow: $per instructions per hit ($total over $hits hits)"
  echo "$per" > "$figures/instructions_per_hit.$flow"
done
rm -rf "$out"
