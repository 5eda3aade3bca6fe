#!/usr/bin/env bash
# Why did experiment=cifar10_swin not learn on an H100 (issue 12)? Its augmentation set on the
# cifar10_nano model, a few CIFAR-10 epochs on a CPU, one component removed at a time, then the
# candidate fixes. One run dir per variant under $OUT; `swin-report $OUT` prints the table.
#   bash benchmarks/ablate_strong_aug.sh [DATA_ROOT] [OUT] [VARIANT ...]
set -euo pipefail
root=${1:-../shared/data/cifar10-jpg}
out=${2:-outputs/ablation}
shift $(( $# > 2 ? 2 : $# ))
epochs=${EPOCHS:-3}
# The cifar10_swin augmentation and loss recipe on the nano model (+ its conv stem), at the GPU
# recipe's lr, scaled to a CPU budget: batch 128, fp32, no EMA, no compile.
common=(experiment=cifar10_nano data=imagefolder "data.root=$root" aug=basic data.batch_size=128
        epochs=$epochs scheduler.warmup_epochs=0.5 threads=${THREADS:-1} log.progress=false)
strong=(aug.auto_augment=trivialaugment aug.random_erasing=0.25 aug.mixup_alpha=0.8 aug.cutmix_alpha=1.0
        train.label_smoothing=0.1)

declare -A variants=(
  [full]=""
  [no_trivialaugment]="aug.auto_augment=none"
  [no_erasing]="aug.random_erasing=0.0"
  [no_mixing]="aug.mixup_alpha=0.0 aug.cutmix_alpha=0.0"
  [no_smoothing]="train.label_smoothing=0.0"
  [crop_flip_only]="aug.auto_augment=none aug.random_erasing=0.0 aug.mixup_alpha=0.0 aug.cutmix_alpha=0.0 train.label_smoothing=0.0"
  # Candidate fixes, everything else on.
  [ta_standard_space]="aug.op_space=standard"
  [mix_half]="aug.mix_prob=0.5"
  [lr_1e-3]="optimizer.lr=1e-3"
  # aug=strong as it now is: the two fixes that helped, together.
  [standard_space_mix_half]="aug.op_space=standard aug.mix_prob=0.5"
)
order=(${@:-full no_trivialaugment no_erasing no_mixing no_smoothing crop_flip_only ta_standard_space mix_half
          lr_1e-3 standard_space_mix_half})
for name in "${order[@]}"; do
  [ -f "$out/$name/results.json" ] && { echo "$name: done already"; continue; }
  echo "== $name: ${variants[$name]:-(all on)}"
  # shellcheck disable=SC2086
  swin-train "${common[@]}" "${strong[@]}" ${variants[$name]} "hydra.run.dir=$out/$name" | grep -E "^epoch|test acc"
done
swin-report "$out"
