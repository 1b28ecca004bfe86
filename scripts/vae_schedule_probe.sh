#!/bin/bash
# Probe (docs/real_footage.md#longer-or-larger-image-vae-tried-not-built): does the image VAE catch more on a
# moving camera when it trains longer, or when it is larger? Through the product's commands, per recording:
#   A  `bench real --no-masks` with fresh models (the defaults: at least 500 optimizer steps, 30 latents);
#   B  the same flow model, the image VAE retrained with `--min-steps 2000` (4x the steps), `--keep-models`;
#   C  (first recording only) `--min-steps 2000 --latent 48 --hidden 512`.
# Rule, fixed before the B and C figures were seen: a variant becomes the default if on the RC lab track
# (the moving tuning camera with room to gain) its mean image AUROC over the visible kinds rises by >= 0.02
# with no fewer visible episodes alarmed by the image detector, and on the indoor tuning camera and the road
# clip its mean AUROC falls by no more than 0.01, its alarmed episodes by no more than 1, and its clean false
# alarms do not rise. Tuning recordings only; a report recording is run after the rule has decided.
#
#   scripts/vae_schedule_probe.sh WORK DATA RECORDING [tune] [larger]
set -euo pipefail
WORK=$1 DATA=$2 REC=$3 TUNE=${4:-} LARGER=${5:-}
tune=(); [ "$TUNE" = tune ] && tune=(--tune "$REC")
mkdir -p "$WORK"
ood-monitor bench real --data "$DATA" --work "$WORK/A" --recordings "$REC" "${tune[@]}" --no-masks \
  --json "$WORK/A_$REC.json" > "$WORK/A_$REC.log" 2>&1
variants=(B); [ "$LARGER" = larger ] && variants+=(C)
for v in "${variants[@]}"; do
  extra=(--min-steps 2000); [ "$v" = C ] && extra+=(--latent 48 --hidden 512)
  mkdir -p "$WORK/$v/$REC"
  rm -rf "$WORK/$v/$REC/vae_flow" && cp -r "$WORK/A/$REC/vae_flow" "$WORK/$v/$REC/vae_flow"
  ood-monitor train vae --kind image --data "$DATA/$REC/train" --out "$WORK/$v/$REC/vae_image" "${extra[@]}" \
    --threads 2 > "$WORK/train_${v}_$REC.log" 2>&1
  ood-monitor bench real --data "$DATA" --work "$WORK/$v" --recordings "$REC" "${tune[@]}" --no-masks --keep-models \
    --json "$WORK/${v}_$REC.json" > "$WORK/${v}_$REC.log" 2>&1
done
python "$(dirname "$0")/vae_schedule_summary.py" "$WORK"/*_"$REC".json
