"""Prefect retry conditions: retry what may pass on a second try, not what cannot."""

from __future__ import annotations


def retry_unless(*permanent: type[BaseException]):
    """A ``retry_condition_fn`` that skips Prefect's retries when the task raised one of
    ``permanent`` (storage already retried its transient faults, the LLM client its own, and
    NaN latents come back for the same seed)."""

    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except BaseException:
            return True
        return True

    return should_retry
