"""Evaluation with local judges only: an LLM judge read from answer-token probabilities or a
reward model, win rates and the length-controlled win rate.
"""
