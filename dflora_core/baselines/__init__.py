"""Peer methods (BBT, BBTv2, gradient LoRA, fine-tuning, zeroth order, calibrated zero-shot, ICL)."""
