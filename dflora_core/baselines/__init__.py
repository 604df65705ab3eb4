"""Peer methods (BBT, BBTv2, gradient LoRA, fine-tuning, zeroth order, calibrated zero-shot, ICL).

One module per family; their rows in the methods table (``dflora_core.methods``) name the
runners. The budget accounting they share is in ``_common`` (see docs/baselines.md).
"""

from ._common import STEP_COST, BudgetPlan, plan_budget

__all__ = ["STEP_COST", "BudgetPlan", "plan_budget"]
