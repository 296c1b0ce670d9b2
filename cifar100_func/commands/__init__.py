"""The commands: each turns argv into a config, runs, and writes its outputs."""
