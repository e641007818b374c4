"""The model: loading and materialising it (the ``model`` stage), rendering chat turns with
its own template, and the only code that touches its internals — decoder-layer lookup, the
read-states and add-vector hooks (METHOD A1 h^l, A4 eq. 4), response log-probabilities
(part B eq. 7) and sentence embeddings for near-duplicate filtering (A2).
"""
