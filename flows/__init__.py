"""Prefect flows over `obf.stages` and `obf.runtime`: no logic of their own beyond orchestration."""
