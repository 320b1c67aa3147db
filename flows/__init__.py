"""Prefect flows over `obf.stages` and `obf.backends`: no logic of their own beyond orchestration."""
