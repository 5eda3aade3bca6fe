#!/usr/bin/env bash
# Which Swin, and which augmentation, for experiment=cifar10_swin (issue 21 C)? Short CPU runs
# at reduced scale, one run dir per variant under $OUT; `swin-report $OUT` prints the table.
#   bash benchmarks/ablate_cifar10_swin.sh [DATA_ROOT] [OUT] [VARIANT ...]
# arch_*: the shape of the network (stem, depths, MLP ratio) at a width a CPU can train (embed 24,
#   heads 3-6-12, head dim 8), 3 epochs of full CIFAR-10 with crop/flip at batch 128.
# aug_*: the regularisation on Lee et al.'s shape with our conv stem, where it can pay on a CPU:
#   on $AUG_PER_CLASS training images a class (default 100: 900 train, 100 validation) for
#   $AUG_EPOCHS epochs (default 60), few enough images for the small model to overfit them, as
#   the 7M-parameter Swin overfits CIFAR-10 over 100 epochs. The subset (symlinks, the full test
#   set) is made under OUT when it is missing.
set -euo pipefail
root=${1:-../shared/data/cifar10-jpg}
out=${2:-outputs/ablation_cifar10_swin}
shift $(( $# > 2 ? 2 : $# ))
mkdir -p "$out"
common=(experiment=cifar10_nano data=imagefolder aug=basic data.batch_size=128 scheduler.warmup_epochs=0.5
        model.embed_dim=24 'model.num_heads=[3,6,12]' model.drop_path_rate=0.1 threads=${THREADS:-1}
        log.progress=false)
lee=(model.stem=patch 'model.depths=[2,6,4]' model.mlp_ratio=2)
# The shape the augmentation variants train: Lee et al.'s with the conv stem (arch_lee_conv).
aug_shape=(model.stem=conv model.stem_convs=1 'model.depths=[2,6,4]' model.mlp_ratio=2)

per_class=${AUG_PER_CLASS:-100}
aug_epochs=${AUG_EPOCHS:-60}
subset="$out/subset$per_class"
make_subset() {  # $per_class training images a class (symlinks), the full test set
  [ -d "$subset/train" ] && return
  for split in train test; do
    for class_dir in "$(realpath "$root/$split")"/*/; do
      class=$(basename "$class_dir")
      mkdir -p "$subset/$split/$class"
      files=("$class_dir"*)  # sorted by the glob
      [ "$split" = train ] && files=("${files[@]:0:$per_class}")
      ln -s "${files[@]}" "$subset/$split/$class/"
    done
  done
}

declare -A variants=(
  # The shapes: our first cifar10_swin (conv stem, 2-6-2, MLP 4), Lee et al.'s (patch stem,
  # 2-6-4, MLP 2), and Lee et al.'s with our conv stem.
  [arch_v1]="model.stem=conv model.stem_convs=1 model.depths=[2,6,2] model.mlp_ratio=4"
  [arch_lee]="${lee[*]}"
  [arch_lee_conv]="model.stem=conv model.stem_convs=1 model.depths=[2,6,4] model.mlp_ratio=2"
  # The same at arch_v1's compute: 34.4 against 41.2 MFLOPs a forward pass buys 4 epochs of 316
  # steps for arch_v1's 3 of 351 (1,264 steps x 34.4 = 1,053 x 41.2).
  [arch_lee_conv_equal_flops]="model.stem=conv model.stem_convs=1 model.depths=[2,6,4] model.mlp_ratio=2 epochs=4 train.max_steps_per_epoch=316"
  # The regularisation: crop/flip only; Lee et al.'s (aug=small_data + label smoothing), without
  # and with repeated augmentation; our earlier recipe's (aug=strong: TrivialAugment).
  [aug_basic]="aug=basic"
  [aug_small_data]="aug=small_data train.label_smoothing=0.1"
  [aug_small_data_repeats]="aug=small_data train.label_smoothing=0.1 data.repeats=3"
  [aug_strong]="aug=strong train.label_smoothing=0.1"
)
order=(${@:-arch_v1 arch_lee arch_lee_conv arch_lee_conv_equal_flops aug_basic aug_small_data aug_small_data_repeats aug_strong})
for name in "${order[@]}"; do
  [ -f "$out/$name/results.json" ] && { echo "$name: done already"; continue; }
  data=("data.root=$root" epochs=3)
  if [[ $name == aug_* ]]; then
    make_subset
    data=("data.root=$subset" "epochs=$aug_epochs" "scheduler.warmup_epochs=$(( aug_epochs / 12 ))" "${aug_shape[@]}")
  fi
  echo "== $name: ${variants[$name]}"
  # shellcheck disable=SC2086
  swin-train "${common[@]}" "${data[@]}" ${variants[$name]} "hydra.run.dir=$out/$name" | grep -E "^epoch|test acc"
done
swin-report "$out"
