"""The data-making steps of the papers: A1 directions (contrastive prompts + uncentred PCA),
A2 self-synthesized instructions and cleaning, A3 consistency scoring and filtering, A4
steered preference pairs and their drop rule, part B's self-annotation of sampled answers,
the local judge and scorers, the A7 baselines and A6's selection grid.
"""
