"""Text generation behind one interface (``Backend``): Hugging Face ``generate`` today.
Steering enters as plain per-layer tensors, so an engine knows nothing about directions.
Every generating step (A2 synthesis, A4 pairs, part B sampling, evaluation) uses it.
"""
