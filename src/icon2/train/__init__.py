"""Preference optimisation on TRL's ``DPOTrainer``: A5 DPO (eq. 5), part B's self-refined
SPA loss (eqs. 9–12) and part C's Wasserstein-DRO reweighting, one ``train`` entry point
that builds TRL's config, trains and saves a checkpoint with its card.
"""
