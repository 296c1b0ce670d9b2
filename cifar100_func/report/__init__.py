"""The study's report and figures."""
