"""Peer methods (BBT, BBTv2, gradient LoRA, fine-tuning, zeroth order, calibrated zero-shot, ICL).

Importing this package registers every method name (``config.register_method``), its runner
(``runner.register_runner``) and the validation of ``baseline.*`` settings. One module per
family; the budget accounting they share is in ``_common`` (see docs/baselines.md).
"""

from . import calibrated, gradient, icl, prompt_tuning, zeroth_order  # noqa: F401 - registration
from ._common import BASELINE_METHODS, STEP_COST, BudgetPlan, check_baseline, plan_budget

__all__ = ["BASELINE_METHODS", "STEP_COST", "BudgetPlan", "check_baseline", "plan_budget"]
