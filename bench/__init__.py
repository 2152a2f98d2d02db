"""`make bench`: every figure of the performance budget, measured against baselines in the same run."""
