"""What the project concludes from predictions: calibration (NLL, ECE, Brier, temperature scaling), greedy ensemble
selection across a sweep, and statistics over seeds (mean, spread, paired tests, verdicts in words).

Pure functions on arrays (numpy or CPU/GPU torch tensors; computed in float64), no I/O."""
