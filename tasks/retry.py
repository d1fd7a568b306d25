"""When a task retries: only after a failure that the same call might not meet again.

A dropped connection, an unreachable server, a lock held too long or a timeout (an OSError, as is
every file-system error) is worth another try; a bad query, a missing table, a failed quality rule
or a corrupted model fails at once, so the person reading the run sees the cause in seconds, not
after every retry's backoff.
"""

from __future__ import annotations

import psycopg

from riskmodel.errors import TransientDatabaseError

TRANSIENT = (TransientDatabaseError, psycopg.OperationalError, OSError)


def retry_on_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's callback signature)
    """Prefect `retry_condition_fn`: True when the failed state's exception is in `TRANSIENT`."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False
