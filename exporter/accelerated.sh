#!/usr/bin/env bash
# One accelerator session (a GPU machine with JAX, no TensorFlow, no network): teachers trained side by side from
# scratch, then students initialised from them and distilled from all of them (function matching), each run sized
# to its wall-clock budget. Models come back as $OUT/<run>.keras, the records as $OUT/records.tgz.
# Usage: OUT=folder PACKED=.gpu/train.npz WHEELS=.gpu/whl bash exporter/accelerated.sh
set -uo pipefail
TEACHERS=${TEACHERS:-4} STUDENTS=${STUDENTS:-3}
TEACHER_S=${TEACHER_S:-230} STUDENT_S=${STUDENT_S:-270} WIDTHS=${WIDTHS:-48,96,192}
RUNS=${RUNS:-/tmp/runs}
mkdir -p "$RUNS" "$OUT"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$RUNS/device.txt"

save() {  # whatever finished so far, so a cut call still returns it
  for d in "$RUNS"/*/; do n=$(basename "$d"); [ -f "$d/model.keras" ] && cp "$d/model.keras" "$OUT/$n.keras"; done
  tar czf "$OUT/records.tgz" --exclude="*.keras" --exclude="barrier-*" -C "$RUNS" .
}

phase() {  # name budget peers extra-args...: run $peers trainings side by side and wait for all
  local name=$1 budget=$2 peers=$3; shift 3
  for i in $(seq 1 "$peers"); do
    python3 -m exporter.accelerated train --packed "$PACKED" --run-dir "$RUNS/$name$i" --budget-s "$budget" \
      --widths "$WIDTHS" --init-seed "$i" --barrier "$RUNS/barrier-$name" --peers "$peers" "$@" \
      $( [ "$name" = student ] && echo "--init-from $RUNS/teacher$i/model.keras" ) \
      > "$RUNS/$name$i.log" 2>&1 &
  done
  wait
  grep -h "epochs" "$RUNS"/"$name"*.log
  save
}

phase teacher "$TEACHER_S" "$TEACHERS" --max-epochs "${TEACHER_EPOCHS:-200}"
TEACHER_ARGS=()
for i in $(seq 1 "$TEACHERS"); do
  [ -f "$RUNS/teacher$i/model.keras" ] && TEACHER_ARGS+=(--teacher "$RUNS/teacher$i/model.keras")
done
[ "${#TEACHER_ARGS[@]}" -gt 0 ] || { echo "no teacher finished"; exit 1; }
phase student "$STUDENT_S" "$STUDENTS" --max-epochs "${STUDENT_EPOCHS:-120}" \
  --learning-rate "${STUDENT_LR:-1e-3}" "${TEACHER_ARGS[@]}"
