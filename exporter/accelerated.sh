#!/usr/bin/env bash
# One accelerator session (a GPU machine with JAX, no TensorFlow, no network): teachers trained side by side from
# scratch, then students initialised from them and distilled from all of them (function matching), each run sized
# to its wall-clock budget. Models come back as $OUT/<run>.keras, the records as $OUT/records.tgz.
# Usage: OUT=folder PACKED=.gpu/train.npz WHEELS=.gpu/whl bash exporter/accelerated.sh (WHEELS: what the machine
# lacks of keras, namex, optree and simplejpeg, for its Python; the rounds of this README ran before decoding moved
# to gateway.decoding, which needs simplejpeg)
# Students of given teachers only: TEACHERS=0 TEACHER_MODELS="a.keras b.keras". Per student, comma lists (the last
# entry holds for the rest): STUDENT_INITS=a.keras,b.keras,- (- starts from scratch), STUDENT_LRS=1e-3,3e-4,
# STUDENT_MIXUPS=0,0.5 (mixup of the views the teachers label).
set -uo pipefail
TEACHERS=${TEACHERS:-4} STUDENTS=${STUDENTS:-3}
TEACHER_MODELS=${TEACHER_MODELS:-} STUDENT_INITS=${STUDENT_INITS:-} STUDENT_LRS=${STUDENT_LRS:-1e-3}
STUDENT_MIXUPS=${STUDENT_MIXUPS:-0}
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

nth() {  # list i: entry i of a comma list, or its last entry
  echo "$1" | tr , '\n' | sed -n "${2}p;\$p" | head -1
}

student_args() {  # i: a student's own initialisation (its teacher's, unless STUDENT_INITS says), rate and mixup
  local init; init=$(nth "${STUDENT_INITS:-$RUNS/teacher$1/model.keras}" "$1")
  [ "$init" = - ] || echo "--init-from $init"
  echo "--learning-rate $(nth "$STUDENT_LRS" "$1") --mixup $(nth "$STUDENT_MIXUPS" "$1")"
}

phase() {  # name budget peers extra-args...: run $peers trainings side by side and wait for all
  local name=$1 budget=$2 peers=$3; shift 3
  for i in $(seq 1 "$peers"); do
    python3 -m exporter.accelerated train --packed "$PACKED" --run-dir "$RUNS/$name$i" --budget-s "$budget" \
      --widths "$WIDTHS" --init-seed "$i" --barrier "$RUNS/barrier-$name" --peers "$peers" "$@" \
      $( [ "$name" = student ] && student_args "$i" ) > "$RUNS/$name$i.log" 2>&1 &
  done
  wait
  grep -h "epochs" "$RUNS"/"$name"*.log
  save
}

[ "$TEACHERS" -gt 0 ] && phase teacher "$TEACHER_S" "$TEACHERS" --max-epochs "${TEACHER_EPOCHS:-200}"
TEACHER_ARGS=()
for t in $TEACHER_MODELS "$RUNS"/teacher*/model.keras; do [ -f "$t" ] && TEACHER_ARGS+=(--teacher "$t"); done
[ "${#TEACHER_ARGS[@]}" -gt 0 ] || { echo "no teacher finished"; exit 1; }
phase student "$STUDENT_S" "$STUDENTS" --max-epochs "${STUDENT_EPOCHS:-120}" \
  "${TEACHER_ARGS[@]}"
