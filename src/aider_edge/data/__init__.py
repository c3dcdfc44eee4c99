"""Image sources, the raw pool, imbalance-scenario splits and the decoded-pixel cache."""
