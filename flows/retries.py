"""How the flows' storage-facing tasks retry: three more tries with backoff, and only after an
error a second try may fix (`obf.core.errors.worth_retrying`), never one in the run's own input."""

from __future__ import annotations

from obf.core.errors import prefect_retry_condition

STORAGE_RETRIES = dict(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=prefect_retry_condition)
