"""Fitness evaluations per second, fidelity and memory, measured side by side (``dflora bench``).

    dflora bench speed    --model smollm2 --out benchmarks/results/cpu-speed.json
    dflora bench fidelity --model smollm2 --tasks sst2,rte,agnews --layers 0,10,20,29
    dflora bench sweep    --model smollm2 --max-tokens 512,1024,2048,4096
    dflora bench memory   --model gpt2-shape --batch 16 --seq 512
    dflora bench table    benchmarks/results/cpu-speed.json

One module a concern: ``setup`` (model, prompts, adapter, candidates), ``strategies`` (the
ways of scoring a population and their forward passes), ``probes`` (matmul ceiling, work
counts, load), ``speed``, ``fidelity`` and ``memory`` (the benchmarks), ``report`` (JSON
header, markdown tables), ``cli`` (the subcommands). Synthetic model shapes are in
``models.tiny``, peak memory in ``environment``. What the results say: benchmarks/README.md.
"""

from .fidelity import FAITHFUL_SPEARMAN, fidelity, run_fidelity, spearman
from .memory import MEMORY_CONFIGS, memory_worker, run_memory
from .probes import SLOW_DTYPE
from .setup import Setup, make_setup
from .speed import Row, run_speed
from .strategies import DEFAULT_STRATEGIES, STRATEGIES, Flags, Strategy

__all__ = [
    "DEFAULT_STRATEGIES",
    "FAITHFUL_SPEARMAN",
    "MEMORY_CONFIGS",
    "SLOW_DTYPE",
    "STRATEGIES",
    "Flags",
    "Row",
    "Setup",
    "Strategy",
    "fidelity",
    "make_setup",
    "memory_worker",
    "run_fidelity",
    "run_memory",
    "run_speed",
    "spearman",
]
