#!/usr/bin/env bash
# Whetstone's APO against GEPA on the APO benchmark world (not part of CI).
#
# Creates a virtual environment outside the repository with the pinned GEPA
# (default ~/.cache/whetstone/gepa-venv, or $WHETSTONE_GEPA_VENV), then runs
# `cargo bench --bench apo_vs_gepa`. APO_BENCH_BUDGETS (default 150,300) and
# APO_BENCH_SEEDS (default 5), APO_BENCH_FIRST_SEED (default 1) choose the grid;
# APO_BENCH_GEPA_ARGS passes arguments to benches/gepa_baseline.py (--merge,
# --split all). Needs python3 >= 3.10 and PyPI.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WHETSTONE_GEPA_VENV:-$HOME/.cache/whetstone/gepa-venv}"
case "$venv" in
  "$repo"/*) echo "WHETSTONE_GEPA_VENV must be outside the repository" >&2; exit 1 ;;
esac
if ! "$venv/bin/python" -c 'import gepa, litellm' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet gepa==0.1.4 litellm==1.110.2
fi
cd "$repo"
WHETSTONE_GEPA_PYTHON="$venv/bin/python" cargo bench --bench apo_vs_gepa
