"""What the papers measure on the outputs: win rates against the starting model (the local
judge and scorers live in :mod:`icon2.steps`), the direction shift, the human-preference
benchmark, the judge-free signals, Table 4's cost, leakage and direction sensitivity.
"""
