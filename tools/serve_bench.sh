#!/usr/bin/env bash
# Load benchmark of `mambacv serve` with wrk (Debian package wrk): throughput and p50 / p99 latency from 1, 4 and 16
# concurrent clients (keep-alive connections), without dynamic batching (--max-batch 1) and with it (--max-batch 8
# --max-delay-ms 5), beside `mambacv bench`'s images/s for the same model at batch 1, 8 and 16, and the machine's
# FMA peak. Each request is one preprocessed (1, 3, S, S) FP32 image in the binary tensor data extension; the
# logits come back binary. Prints a markdown table, then the rows as JSON (also written to OUT.json / OUT.md).
#   tools/serve_bench.sh [--build DIR] [--model vmamba_tiny_s1l8] [--seconds 10] [--threads 2] [--out PREFIX]
# Random weights: the speed is that of the real checkpoint.
set -euo pipefail
build=build model=vmamba_tiny_s1l8 seconds=10 threads=2 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "serve_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
cli="$build/mambacv"
[ -x "$cli" ] || { echo "serve_bench.sh: $cli not found (build first, or --build DIR)" >&2; exit 1; }
command -v wrk > /dev/null || { echo "serve_bench.sh: wrk not found (Debian: apt-get install wrk)" >&2; exit 1; }
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2> /dev/null && wait "$server_pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# bench: the library alone, in this process layout (one process, --threads)
"$cli" bench --model "$model" --batch 1,8,16 --iters 10 --threads "$threads" --json > "$work/bench.json"
size=$(python3 -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]['size'])" "$work/bench.json")

# the request: JSON header, then 3 * size * size little-endian floats of 0.5
cat > "$work/request.lua" << EOF
local n = 3 * $size * $size
local header = '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3,$size,$size],' ..
               '"parameters":{"binary_data_size":' .. (4 * n) .. '}}],' ..
               '"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}'
wrk.method = "POST"
wrk.body = header .. string.rep("\\0\\0\\0\\63", n)
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = tostring(#header)
done = function(summary, latency, requests)
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status +
                 summary.errors.timeout
  io.write(string.format('WRK {"requests": %d, "failed": %d, "seconds": %.3f, "p50_ms": %.2f, "p99_ms": %.2f}\\n',
           summary.requests, failed, summary.duration / 1e6, latency:percentile(50) / 1e3,
           latency:percentile(99) / 1e3))
end
EOF

rows="$work/rows.jsonl"
: > "$rows"
for mode in off on; do
  if [ "$mode" = on ]; then batching=(--max-batch 8 --max-delay-ms 5); else batching=(--max-batch 1 --max-delay-ms 0); fi
  "$cli" serve --model "$model" --random-weights --port 0 --threads "$threads" "${batching[@]}" --max-queue 64 \
    > "$work/server.out" 2> "$work/server.err" &
  server_pid=$!
  for _ in $(seq 600); do
    port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$work/server.out")
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/v2/health/ready" > /dev/null 2>&1 && break
    sleep 0.1
  done
  [ -n "${port:-}" ] || { echo "serve_bench.sh: the server did not start:" >&2; cat "$work/server.err" >&2; exit 1; }
  url="http://127.0.0.1:$port/v2/models/$model/infer"
  for clients in 1 4 16; do
    curl -s "http://127.0.0.1:$port/metrics" > "$work/metrics_${mode}_${clients}_before.txt"
    wrk -t1 -c "$clients" -d "${seconds}s" --timeout 30s -s "$work/request.lua" "$url" > "$work/wrk.txt" 2>&1 || true
    line=$(sed -n 's/^WRK //p' "$work/wrk.txt")
    [ -n "$line" ] || { echo "serve_bench.sh: wrk failed:" >&2; cat "$work/wrk.txt" >&2; exit 1; }
    curl -s "http://127.0.0.1:$port/metrics" > "$work/metrics_${mode}_${clients}_after.txt"
    echo "{\"batching\": \"$mode\", \"clients\": $clients, \"wrk\": $line}" >> "$rows"
  done
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "serve_bench.sh: the server did not exit 0 on SIGTERM" >&2; exit 1; }
  server_pid=""
done

python3 - "$work" "$model" "$threads" "$out" << 'EOF'
import json, re, sys
work, model, threads, out = sys.argv[1:5]
bench = [json.loads(l) for l in open(f"{work}/bench.json") if l.strip().startswith("{")]
machine, runs = bench[0]["machine"], bench[1:]
best = max(runs, key=lambda r: r["images_per_s"])
def sample(path, name):
    m = re.search(name + r'\{model="[^"]*"\} (\S+)', open(path).read())
    return float(m.group(1)) if m else 0.0
def batch_mean(mode, clients):
    # images per forward pass during this run: the batch-size histogram's sum and count, after minus before
    f = lambda when, what: sample(f"{work}/metrics_{mode}_{clients}_{when}.txt", "mambacv_batch_size_" + what)
    n = f("after", "count") - f("before", "count")
    return (f("after", "sum") - f("before", "sum")) / n if n > 0 else 0.0
rows = []
for l in open(f"{work}/rows.jsonl"):
    r = json.loads(l)
    w = r["wrk"]
    ok = w["requests"] - w["failed"]
    ips = ok / w["seconds"] if w["seconds"] else 0
    rows.append({"model": model, "batching": r["batching"], "clients": r["clients"], "requests": w["requests"],
                 "failed": w["failed"], "images_per_s": ips, "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
                 "mean_batch": batch_mean(r["batching"], r["clients"]), "fraction_of_bench_best": ips / best["images_per_s"]})
md = [f"CPU {machine['cpu']}, {threads} threads; FMA peak {machine['fma_peak_gflops']:.1f} GFLOP/s, "
      f"GEMM {machine['gemm_gflops']:.1f} GFLOP/s",
      "`mambacv bench` " + ", ".join(f"batch {r['batch']}: {r['images_per_s']:.2f} images/s" for r in runs) +
      f" (best: batch {best['batch']})", "",
      "| batching | clients | images/s | p50 ms | p99 ms | images per forward | of bench's best |",
      "|---|---|---|---|---|---|---|"]
for r in rows:
    md.append(f"| {r['batching']} | {r['clients']} | {r['images_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['mean_batch']:.2f} | {100 * r['fraction_of_bench_best']:.0f}% |")
md = "\n".join(md)
doc = {"machine": machine, "bench": runs, "serve": rows}
print(md)
print(json.dumps(doc))
if out:
    open(out + ".md", "w").write(md + "\n")
    open(out + ".json", "w").write(json.dumps(doc, indent=1) + "\n")
EOF
