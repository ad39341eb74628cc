"""Python tasks for tasks.toml (`runner = "python"`, `function = "tasks:NAME"`).

A task is a plain function: it gets the request's args and kwargs and returns
something JSON-serializable. What it prints goes to the log (stderr), never
into the result. Async functions work too. An exception fails the attempt
(and is retried if the task has retries).
"""

import os


def add(x, y):
    """Add two numbers."""
    return x + y


def flaky(fail_times=2):
    """Fail on the first `fail_times` attempts, then succeed."""
    attempt = int(os.environ.get("FASTWORKER_ATTEMPT", "1"))
    if attempt <= int(fail_times):
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return {"succeeded_on_attempt": attempt}
