#!/usr/bin/env bash
# One command on a GPU machine or cluster node (docs/clusters.md, "On a GPU machine or cluster node"):
# the GPU check of the fused cohort step, then the blog's study (profile `full`, main arms)
# for as many seeds as fit, packed under $OUT for replication/import_gpu_session.py.
# Prepared by `make gpu-prep` (the data archive and the commit go in .gpu/, which is copied
# there with the working tree); run from the tree's root under a 600-s time limit:
#
#   OUT=<folder to bring back> bash benchmarks/gpu_session.sh
#
# Sized to end within 570 s of its start. Dry run on the CPU (timings meaningless):
#   OUT=/tmp/out DEVICE=cpu PROFILE=smoke SEEDS=1 TOTAL_S=300 bash benchmarks/gpu_session.sh
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
start=$(date +%s)
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-full}
SEEDS=${SEEDS:-5}
TOTAL_S=${TOTAL_S:-570}      # the whole script, within a 600-s time limit
CHECK_S=${CHECK_S:-200}      # the GPU check's share
PACK_S=30                    # left for the table, plots and packing
DATA=${DATA:-.gpu/cifar10-jpeg75.tar.gz}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MUTUALBENCH_DATA_ROOT=${MUTUALBENCH_DATA_ROOT:-/tmp/mutualbench-data}
[ -f .gpu/COMMIT ] && export MUTUALBENCH_SOURCE_COMMIT="$(cat .gpu/COMMIT)"
[ -f "$DATA" ] || { echo "no data archive at $DATA: run 'make gpu-prep' and copy .gpu/ with the tree"; exit 2; }

{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/machine.txt" 2>&1

quick=()
[ "$DEVICE" = cpu ] && quick=(--quick)
echo "== GPU check (at most ${CHECK_S} s)"
timeout -k 5 "$CHECK_S" "$PY" benchmarks/gpu_check.py --device "$DEVICE" "${quick[@]}" --out "$OUT/gpu-check.md" \
  > "$OUT/gpu-check.log" 2>&1
echo "gpu check exit $?"

left=$(( TOTAL_S - ($(date +%s) - start) - PACK_S ))
budget=$(( left * 3 / 4 ))   # no new run after this; a run started before it has the rest to end
mkdir -p /tmp/gpu-session
# continue the stored study: its complete runs are skipped, the archive holds them all, and
# never with fewer seeds than it has (the manifest written here replaces the stored one)
if [ ! -d "/tmp/gpu-session/$PROFILE" ] && [ -f "results/seed_blog/$PROFILE/study.json" ]; then
  cp -r "results/seed_blog/$PROFILE" "/tmp/gpu-session/$PROFILE"
fi
arms=(--no-ablations)
if [ -f "/tmp/gpu-session/$PROFILE/study.json" ]; then
  read -r stored stored_ablations < <("$PY" -c 'import json, sys; m = json.load(open(sys.argv[1]))
print(len(m["seeds"]), int(any(r.get("ablation") for r in m["runs"])))' "/tmp/gpu-session/$PROFILE/study.json")
  [ "$stored" -gt "$SEEDS" ] && SEEDS=$stored
  [ "$stored_ablations" = 1 ] && arms=()
fi
echo "== study ${PROFILE}, ${SEEDS} seeds, ${arms[*]:-with ablations}: ${left} s left, no run starts after ${budget} s"
timeout -k 5 "$left" "$PY" -m mutualbench.cli replicate replication/seed_blog.toml --profile "$PROFILE" \
  --seeds "$SEEDS" "${arms[@]}" --data "$DATA" --device "$DEVICE" --out "/tmp/gpu-session/$PROFILE" \
  --time-budget "$budget" > "$OUT/study.log" 2>&1
echo "study exit $?"
# the table again: a study stopped by the timeout wrote none (a rerun on a warm machine resumes it)
[ -f "/tmp/gpu-session/$PROFILE/study.json" ] && "$PY" -m mutualbench.cli table "/tmp/gpu-session/$PROFILE" \
  >> "$OUT/study.log" 2>&1
tar -czf "$OUT/study.tar.gz" --exclude='*.pt' -C /tmp/gpu-session "$PROFILE"
echo "== $(( $(date +%s) - start )) s"
tail -n 30 "$OUT/gpu-check.md" 2>/dev/null
tail -n 25 "/tmp/gpu-session/$PROFILE/table.md" 2>/dev/null
