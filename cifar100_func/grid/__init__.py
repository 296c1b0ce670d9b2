"""The hyper-parameter grid: stacks of configurations trained rung by rung, locally or on Ray."""
