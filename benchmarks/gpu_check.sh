#!/usr/bin/env bash
# The GPU check: one command that, on a machine with one CUDA GPU and no network, measures
# swin-cli's GPU numbers and writes them to one folder, in at most $BUDGET_S seconds (default 540,
# one 9-minute device call: each part is cut short rather than the whole check running over).
#
#   bash benchmarks/gpu_check.sh CIFAR10_ROOT OUT_DIR
#
# The parts, in order ($PARTS picks and orders them; default "bench throughput headline"):
#   bench       mode=benchmark (train and inference img/s, TFLOP/s, MFU, peak memory, data share)
#               for each of $BENCH_SPECS: experiment=cifar10_swin eager, compiled (with a profile:
#               its top ops and a trace), and compiled with CUDA graphs (reduce-overhead) and the
#               compiled optimizer step; tiny@224 eager and compiled; tiny@224 at batch 32 without
#               and with model.grad_checkpointing (max_memory_allocated); random data, nothing read
#   throughput  benchmarks/throughput.py: tiny@224 compiled, ours vs timm (issue 12's >= 1.2x)
#   headline    experiment=cifar10_swin to the end (100 epochs; the >= 94% in <= 10 minutes
#               target), in whatever time is left: past it, the run stops at an epoch end and
#               tests its best weights (train.time_limit_min); $HEADLINE_EXTRA adds overrides
#   digits      experiment=cifar10_nano data=digits in fp32, bf16 and bf16+compile: each path runs
#               and learns
#   augment     benchmarks/augment.py: every aug preset vs the train steps it feeds
#   tta         the headline's weights evaluated with flip test-time augmentation
# OUT_DIR/summary.md then has accuracy, img/s and data share of every run and the tables.
#
# swin-cli must be importable by $PYTHON (default python3); timm adds the comparison rows.
# swin-train runs as `python -m swin_cli` from a scratch folder, so the installed package (with
# its conf/) is what runs. Each part has its own time limit and a failure does not stop the
# others; progress.log says which part ended how, and the script exits 1 when any part failed
# (or was skipped for time). Without a GPU it stops at once with one line. README.md ("GPU
# check") shows how to carry hydra-core and omegaconf to a GPU machine that lacks them.
set -uo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash benchmarks/gpu_check.sh CIFAR10_ROOT OUT_DIR" >&2
  exit 2
fi
py=${PYTHON:-python3}
# For a dry run of this script's plumbing on a CPU: DEVICE=cpu CIFAR_EXTRA="train.compile=false ..."
device=${DEVICE:-cuda}
# Every part needs the GPU: without one, say so now rather than after nine minutes of failures.
if [ "$device" = cuda ]; then
  gpu=$("$py" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null) || gpu="no torch"
  if [ "$gpu" != True ]; then
    why=$([ "$gpu" = "no torch" ] && echo "$py cannot import torch" || echo "torch.cuda.is_available() is False")
    echo "gpu_check: error: no CUDA GPU here ($why); for a dry run on a CPU set DEVICE=cpu" >&2
    exit 1
  fi
fi
data=$(cd "$1" && pwd) || exit 2
mkdir -p "$2" && out=$(cd "$2" && pwd) || exit 2
here=$(cd "$(dirname "$0")" && pwd)
read -ra parts <<<"${PARTS:-bench throughput headline}"
read -ra headline_extra <<<"${HEADLINE_EXTRA:-}"
wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }
scratch=$(mktemp -d)
# One line per part that failed or did not run; parts in the background append to it too.
failed=$scratch/failed
: >"$failed"
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
export PYTHONUNBUFFERED=1

note() { echo "[$(date +%T)] $*" | tee -a "$out/progress.log"; }
# part NAME SECONDS CMD...: run CMD in the scratch folder for at most SECONDS (and never past the
# deadline), output to NAME.log.
part() {
  local name=$1 limit=$2 left=$(( deadline - $(date +%s) - 15 ))
  shift 2
  (( left < limit )) && limit=$left
  (( limit < 20 )) && { note "skip $name: out of time"; echo "$name (out of time)" >>"$failed"; return; }
  note "start $name (limit ${limit}s)"
  (cd "$scratch" && timeout --kill-after=10 "$limit" "$@") >"$out/$name.log" 2>&1
  local rc=$?
  note "end $name rc=$rc"
  (( rc == 0 )) || echo "$name (rc=$rc, see $name.log)" >>"$failed"
}
train=("$py" -m swin_cli log.progress=false "device=$device")

note "swin-cli GPU check: data $data, out $out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# name:limit:args. Eager runs get 30 s; a compiled one compiles its train and eval graphs in the
# warm-up (cifar10_swin: ~80 s on an H100 in issue 12). Each writes bench/<name>/benchmark.json.
cifar=(experiment=cifar10_swin data=imagefolder "data.root=$data")
default_specs=(
  "cifar10_swin:30:${cifar[*]} train.compile=false"
  "cifar10_swin_compiled:130:${cifar[*]} benchmark.profile=true"
  "cifar10_swin_cudagraphs:130:${cifar[*]} train.compile_mode=reduce-overhead train.compile_optimizer=true"
  "tiny224:30:model=tiny data=cifar10 data.image_size=224 data.batch_size=128 train.compile=false"
  "tiny224_compiled:140:model=tiny data=cifar10 data.image_size=224 data.batch_size=128 train.compile=true"
  "tiny224_b32:30:model=tiny data=cifar10 data.image_size=224 data.batch_size=32 train.compile=false"
  "tiny224_b32_checkpointing:30:model=tiny data=cifar10 data.image_size=224 data.batch_size=32 train.compile=false model.grad_checkpointing=true"
)
if [ -n "${BENCH_SPECS:-}" ]; then mapfile -t bench_specs <<<"$BENCH_SPECS"; else bench_specs=("${default_specs[@]}"); fi

for which in "${parts[@]}"; do
  case $which in
    bench)
      for spec in "${bench_specs[@]}"; do
        IFS=: read -r bench_name bench_limit bench_rest <<<"$spec"
        read -ra bench_args <<<"$bench_rest"
        part "bench_$bench_name" "$bench_limit" "${train[@]}" mode=benchmark train.precision=bf16 "${bench_args[@]}" \
          benchmark.warmup_steps=5 benchmark.steps=30 "hydra.run.dir=$out/bench/$bench_name"
      done ;;
    throughput)
      part throughput_compiled 170 "$py" "$here/throughput.py" --device "$device" --configs tiny --repeats 3 \
        --variants bf16+compile --models ours-math timm ;;
    headline)
      # It stops itself at an epoch end a minute before the part's limit (train.time_limit_min),
      # so that a run cut short still tests its best weights and writes results.json.
      minutes=$(awk -v s=$(( deadline - $(date +%s) - 15 - 60 )) 'BEGIN { printf "%.2f", (s > 60 ? s : 60) / 60 }')
      part cifar10_swin 900 "${train[@]}" "${cifar[@]}" "train.time_limit_min=$minutes" \
        "hydra.run.dir=$out/runs/cifar10_swin" "${headline_extra[@]}" ;;
    digits)
      for precision in fp32 bf16 bf16+compile; do
        name=digits_${precision/+/_}
        compile=$([ "$precision" = bf16+compile ] && echo true || echo false)
        part "$name" 120 "${train[@]}" experiment=cifar10_nano data=digits "train.precision=${precision%+compile}" \
          "train.compile=$compile" "hydra.run.dir=$out/runs/$name" &
      done
      wait ;;
    augment)
      part augment 60 "$py" "$here/augment.py" --device "$device" --compile ;;
    tta)
      part tta_flip 60 "${train[@]}" mode=eval "ckpt=$out/runs/cifar10_swin" data=imagefolder "data.root=$data" \
        eval.tta=flip "hydra.run.dir=$out/eval_tta_flip" ;;
    *)
      note "unknown part $which (bench, throughput, headline, digits, augment, tta)"
      echo "$which (unknown part)" >>"$failed" ;;
  esac
done
"$py" "$here/gpu_summary.py" "$out" >"$out/summary.md" 2>>"$out/progress.log" \
  || echo "summary (gpu_summary.py failed, see progress.log)" >>"$failed"
note "done: $out/summary.md"
cat "$out/summary.md"
if [ -s "$failed" ]; then
  n=$(wc -l <"$failed")
  parts=$(paste -sd ';' "$failed" | sed 's/;/; /g')
  echo "failed: $parts" >>"$out/progress.log"
  echo "gpu_check: error: $n part$([ "$n" -eq 1 ] || echo s) failed: $parts (logs in $out)" >&2
  exit 1
fi
