#!/usr/bin/env bash
# Benchmark a config on one GPU in a few variants, one process each, and print a summary:
#
#   launch/gpu_bench.sh OUT_DIR [VARIANT ...]
#
# A VARIANT is NAME or NAME:ARG,ARG,... where each ARG is a flag of wsdjax.bench
# (--config.a=1, --profile=DIR: a trace of 3 steps and the ops that took the most GPU
# time) or XLA_FLAGS=... for that variant's process. The default variants are the ones
# docs/performance.md reports for configs/gpt2_124m.py:
#   base        the config as it is (unrolled layers, cuDNN flash attention, the chunked
#               loss and the Pallas SwiGLU backward: the 'auto' picks on GPU)
#   scan_mb2    layer_loop=scan, which needs 2 micro-batches to fit 80 GB
#   xla_attn    attention_impl=xla, whose [B, H, T, T] scores need 4 micro-batches
#   plain_loss  loss_impl=plain (the [B, T, V] float32 logits)
#   xla_swiglu  swiglu_impl=xla (autodiff's two-pass SwiGLU backward)
# Each variant writes OUT_DIR/NAME.json and NAME.log. Environment:
#   CONFIG=configs/gpt2_124m.py  STEPS=20  SAVES=1  DEADLINE_S=0 (no new variant after
#   this many seconds; 0 = none)  PYTHON=python3
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 (jax's default 0.75 leaves a quarter unused)
set -u
out=${1:?usage: launch/gpu_bench.sh OUT_DIR [VARIANT ...]}
shift
config=${CONFIG:-configs/gpt2_124m.py}
steps=${STEPS:-20}
saves=${SAVES:-1}
deadline=${DEADLINE_S:-0}
python=${PYTHON:-python3}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out" || exit 1
[ $# -gt 0 ] || set -- base "scan_mb2:--config.model.layer_loop=scan,--config.train.micro_batches=2" \
  "xla_attn:--config.model.attention_impl=xla,--config.train.micro_batches=4" \
  "plain_loss:--config.model.loss_impl=plain" "xla_swiglu:--config.model.swiglu_impl=xla"

start=$SECONDS
for variant in "$@"; do
  name=${variant%%:*}
  args=() overrides=() envs=()
  if [[ $variant == *:* ]]; then IFS=, read -r -a args <<<"${variant#*:}"; fi
  for a in ${args[@]+"${args[@]}"}; do
    if [[ $a == XLA_FLAGS=* ]]; then envs+=("$a"); else overrides+=("$a"); fi
  done
  if [ "$deadline" -gt 0 ] && [ $((SECONDS - start)) -ge "$deadline" ]; then
    echo "== $name: skipped (past DEADLINE_S=$deadline)"
    continue
  fi
  workdir=$(mktemp -d /tmp/wsdjax-gpu-bench-XXXX)
  t0=$SECONDS
  env ${envs[@]+"${envs[@]}"} "$python" -m wsdjax.bench --config "$config" --steps "$steps" \
    --saves "$saves" --workdir "$workdir" --json "$out/$name.json" \
    ${overrides[@]+"${overrides[@]}"} >"$out/$name.log" 2>&1
  rc=$?
  echo "== $name (${args[*]:-as configured}): exit $rc in $((SECONDS - t0)) s"
  if [ $rc = 0 ]; then grep -v "^wrote" "$out/$name.log" | sed -n '/^config/,$p'; else tail -5 "$out/$name.log"; fi
  rm -rf "$workdir"
done

"$python" - "$out" <<'EOF'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")), key=os.path.getmtime):
  r = json.load(open(path))
  rows.append((os.path.basename(path)[:-5], r["step_s_median"], r["tokens_per_s"],
               100 * r["mfu"], r["peak_memory_bytes"] / 2**30, r["compile_s"],
               100 * r.get("ckpt_stall_share", float("nan"))))
print(f"\n{'variant':<10} {'step s':>7} {'tokens/s':>10} {'MFU %':>6} {'peak GiB':>8} "
      f"{'compile s':>9} {'ckpt stall %':>12}")
for r in rows:
  print(f"{r[0]:<10} {r[1]:7.3f} {r[2]:10,.0f} {r[3]:6.1f} {r[4]:8.1f} {r[5]:9.1f} {r[6]:12.1f}")
EOF
