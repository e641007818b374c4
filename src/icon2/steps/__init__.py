"""The data-making steps of the papers: A1 directions (contrastive prompts + uncentred PCA),
A2 self-synthesized instructions and cleaning, A3 consistency scoring and filtering, A4
steered preference pairs, and part B's self-annotation of sampled answers.
"""
