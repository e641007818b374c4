"""The four baselines of METHOD A7: selection rules, pair generation, one run."""
