#!/usr/bin/env bash
# Chapter 08's grid in the tuned regime: every setting's learning rate chosen on validation
# (--lr-grid: base rate x 1/4, 1, 4, seed 0), then seeds 1 and 2 at the chosen rate; every run
# trained to a plateau (one warm-up epoch, then the rate divided by 10 after 3 epochs without a
# gain on validation, twice; the next such plateau stops the run; cap 60 epochs).
# Resumable: rerun the same command and finished runs are skipped. Every finished run's record
# in grids/runs/08_tuned/ is committed as it lands (checkpoints are not), so a fresh clone
# resumes where the last one stopped; the records of book/results/08_benchmark_tuned.json are
# restored there too.
# Usage: grids/08_benchmark.sh vit_distilled|mobilenet_v2 [datasets...]
#   METHODS="bias full" grids/08_benchmark.sh ... runs only those methods (e.g. to split one
#   column over two threads; never give two processes the same method and dataset).
# Run from a clean checkout (--save refuses a modified one), one backbone per CPU thread.
set -euo pipefail
backbone=$1; shift
datasets=${*:-animal_silhouettes fashion_mnist mnist}
recipe='"max_train": 1200, "batch_size": 32, "warmup_epochs": 1, "epochs": 60, "patience": 3, "schedule": "plateau"'
if [ "$backbone" = vit_distilled ]; then
  methods=(linear bias vp-pad msvp vpt-shallow vpt-deep insvp ap full)
  declare -A extra=([vp-pad]='"prompt_size": 4' [ap]='"layer": "blocks.0"' [bias]='"lr": 0.003'
                    [insvp]='"lr": 0.001' [full]='"lr": 0.0003')
else
  methods=(linear bias vp-pad msvp ap full)
  declare -A extra=([vp-pad]='"prompt_size": 8' [ap]='"layer": "features.8"' [bias]='"lr": 0.003'
                    [full]='"lr": 0.0003')
fi
if [ -n "${METHODS:-}" ]; then
  read -r -a methods <<< "$METHODS"
fi
for dataset in $datasets; do
  for method in "${methods[@]}"; do
    opts="{$recipe${extra[$method]:+, ${extra[$method]}}}"
    python -m vplib.experiments --out grids/runs/08_tuned --save 08_benchmark_tuned \
      --backbones "$backbone" --datasets "$dataset" --methods "$method" --seeds 0 1 2 \
      --lr-grid --options "$opts"
  done
done
