"""Example Python tasks for tasks.toml.example, called through fastworker's
Python runner (`runner = "python"`, `function = "examples.tasks:NAME"`).

A task is a plain function: it gets the request's args and kwargs and returns
something JSON-serializable. Anything it prints goes to fastworker's stderr
tail, never into the result. Async functions work too.
"""

import asyncio
import time


def add(x, y):
    """Add two numbers."""
    return x + y


def sleep(seconds=1.0):
    """Sleep, then say how long it slept."""
    time.sleep(float(seconds))
    return {"slept": float(seconds)}


def fail(message="this task fails on purpose"):
    """Raise an exception, to show how failures are reported."""
    raise ValueError(message)


def shout(text):
    """Upper-case text; the print shows that stdout noise can't corrupt results."""
    print(f"shouting {text!r}")
    return text.upper()


async def fetch_later(value, delay=0.1):
    """An async task: awaited by the runner's event loop."""
    await asyncio.sleep(float(delay))
    return value
