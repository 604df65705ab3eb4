#!/usr/bin/env bash
# The first command on a lent GPU machine (docs/scale-out.md, "The first GPU"; benchmarks/README.md).
# It needs no model pieces: the tree and the small wheels of build/gpu/wheels (`make gpu-pieces`), carried
# with it. One command, at most FIRST_S seconds (default 270: a second try fits in the ~15 minutes a session
# has, start-up included):
#
#   benchmarks/gpu/first.sh              on the GPU machine ($OUT: the device tool's output folder)
#   benchmarks/gpu/first.sh --dry-run    here: the same steps on the CPU under the fake CUDA device
#                                        (tests/fake_cuda.py), tiny shapes and models (tests/test_gpu_script.py)
#
# Steps, each under `timeout`, each written into $OUT as soon as it ends, the next one run whatever the last
# did (a failed install, a failed step), every file named after the card found (h100-*, h200-*, gpu-*):
#   env       nvidia-smi, torch / transformers / peft versions                      -> <card>-env.txt
#   coverage  tests/test_fake_cuda.py replayed on the real card (DFLORA_REAL_CUDA=1): every method, three
#             architectures, bf16, every search option, bench, compare --jobs 2, export / predict / evaluate
#                                                                                     -> <card>-coverage.xml
#   speed     RoBERTa-large and GPT2-XL shapes: every faster path against the one-by-one fp32 reference,
#             faithful or not (targets: >= 1,000 and >= 250 evaluations/s, >= 25x)  -> <card>-speed-*.json
#   compile   torch.compile and CUDA graphs on the RoBERTa-large shape (never run before: opt-in until here)
#                                                                                     -> <card>-compile.json
#   memory    C-LoRA against gradient LoRA at GPT2-XL 16 x 512, one process, the sizing's token budget
#             (target: <= 0.5x)                                                       -> <card>-memory.json
# plus <card>-steps.tsv (step, exit status, seconds, cap) and <card>-first.log (every step's output, appended
# as it ends): 8 files at most. Not verified here: Ray's GPU accounting (the image has no Ray; see
# docs/scale-out.md), SmolLM2 (its wheel travels in pieces: run.sh, the later command set).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-$REPO/build/gpu/wheels}"
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY=1
FIRST_S="${FIRST_S:-270}"
OUT="${OUT:-$REPO/build/gpu/first}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_BREAK_SYSTEM_PACKAGES=1 TQDM_DISABLE=1
if [ -n "$DRY" ]; then  # the CPU build of torch under the fake device, in this process and every child
    export DFLORA_FAKE_CUDA=1 PYTHONPATH="$REPO/tests/fake_cuda_site:$PYTHONPATH"
else
    export DFLORA_REAL_CUDA=1
fi
START=$SECONDS

card() {  # h100, h200, ... from the device's name; "dry" in the dry run
    [ -z "$DRY" ] || { echo dry; return; }
    "$PY" -c "import re, torch; n = torch.cuda.get_device_name(0).lower(); m = re.search(r'\b([a-z]\d{2,4})\b', n); print(m.group(1) if m else 'gpu')" 2> /dev/null || echo gpu
}
CARD="$(card)"
LOG="$OUT/$CARD-first.log"
TSV="$OUT/$CARD-steps.tsv"
: > "$TSV"
say() { echo "[first $((SECONDS - START))s] $*" | tee -a "$LOG" >&2; }

step() {  # NAME CAP_S CMD...: CMD under `timeout`, within the command's deadline; its output appended to LOG
    local name="$1" cap="$2" left t rc=0 t0=$SECONDS
    shift 2
    left=$((FIRST_S - (SECONDS - START)))
    t=$((cap < left ? cap : left))
    if [ "$t" -le 5 ]; then
        say "$name: skipped (no time left)"
        printf '%s\tskipped\t0\t%s\n' "$name" "$cap" >> "$TSV"
        return 0
    fi
    say "$name: up to ${t} s"
    (cd "$REPO" && timeout -k 10 "$t" "$@") >> "$LOG" 2>&1 || rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$cap" >> "$TSV"
    say "$name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (time limit)')"
}

install() {  # what the image lacks, from the carried wheels only; a failure is logged and the steps go on
    local missing rc=0 t0=$SECONDS
    missing=$("$PY" -c "
import importlib.util as u
need = {'cma': 'cma', 'gguf': 'gguf', 'pytest': 'pytest', 'pygments': 'pygments', 'pluggy': 'pluggy', 'iniconfig': 'iniconfig'}
print(' '.join(d for m, d in need.items() if u.find_spec(m) is None))" 2>> "$LOG")
    if [ -z "$missing" ]; then
        say "install: nothing missing"
    elif [ -n "$DRY" ]; then
        say "install: dry run: would install $missing from $WHEELS"
    else
        say "install: $missing from $WHEELS"
        timeout 60 "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing >> "$LOG" 2>&1 || rc=$?
    fi
    printf 'install\t%s\t%s\t60\n' "$rc" "$((SECONDS - t0))" >> "$TSV"
}

ENV_PY='import sys, torch, transformers, peft
print(sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("transformers", transformers.__version__, "peft", peft.__version__)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), "mem_get_info", torch.cuda.mem_get_info())'

DF=("$PY" -m dflora_core)
SPEED=(--strategies reference,population,trim,scored-head,prefix-reuse,bf16 --reps 3 --one-by-one-candidates 4)
SHAPES=(roberta-large-shape gpt2-xl-shape)
COMPILE=(--model roberta-large-shape --strategies prefix-reuse,bf16,compile-bf16,cudagraphs-bf16 --reps 3)
MEM=(--model gpt2-xl-shape --batch 16 --seq 512)
COVER=(-m "not slow")
if [ -n "$DRY" ]; then  # tiny: the suite runs this
    SPEED=(--strategies reference,prefix-reuse --reps 1 --one-by-one-candidates 1 --popsize 4 --examples 8
        --mean-tokens 8 --threads 1)
    SHAPES=(roberta-tiny-shape gpt2-tiny-shape)
    COMPILE=(--model roberta-tiny-shape --strategies prefix-reuse --reps 1 --one-by-one-candidates 1 --popsize 4
        --examples 8 --mean-tokens 8 --threads 1)  # torch.compile itself only on a card
    MEM=(--model gpt2-tiny-shape --batch 2 --seq 32 --population 4)
    COVER=(-m "not slow" -k "every_method and (c-lora-tiny-llama-fp32 or zeroshot-tiny-llama)")
fi

say "card $CARD, results in $OUT, at most $FIRST_S s${DRY:+ (dry run: CPU under the fake CUDA device)}"
install
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; "$PY" -c "$ENV_PY" 2>&1; "$PY" -m pip list 2>&1; } > "$OUT/$CARD-env.txt"
say "env: $OUT/$CARD-env.txt"
step coverage 110 "$PY" -m pytest tests/test_fake_cuda.py "${COVER[@]}" -p no:cacheprovider -q --junitxml="$OUT/$CARD-coverage.xml"
for m in "${SHAPES[@]}"; do
    step "speed-${m%-shape}" "$([ "${m#gpt2}" != "$m" ] && echo 50 || echo 40)" "${DF[@]}" bench speed --device cuda \
        --model "$m" "${SPEED[@]}" --out "$OUT/$CARD-speed-${m%-shape}.json"
done
step compile 50 "${DF[@]}" bench speed --device cuda "${COMPILE[@]}" --out "$OUT/$CARD-compile.json"
step memory 30 "${DF[@]}" bench memory --device cuda "${MEM[@]}" --out "$OUT/$CARD-memory.json"
say "done in $((SECONDS - START)) s: $(ls "$OUT" | tr '\n' ' ')"
