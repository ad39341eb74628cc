"""FastWorker 0.3.0's own Python Client against a fastworker control plane.

Run by tests/it/python_client.rs as
    python fastworker_client_compat.py DISCOVERY_ADDRESS
with the control plane's manifest defining add, boom, sleep (pytasks.py).
Prints "ok" and exits 0 when every check holds; any failure raises.
"""

import asyncio
import json
import socket
import sys
import time

import pynng

from fastworker import Client
from fastworker.tasks.models import TaskPriority, TaskStatus


async def wait_for_result(client, task_id, status, timeout=20.0):
    """Polls get_task_result until the task reaches `status`."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        result = await client.get_task_result(task_id)
        seen = result.status if result else None
        if seen == status:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} is {seen}, never {status}")


def free_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


async def receive(listener, timeout=15.0):
    return json.loads((await asyncio.wait_for(listener.arecv(), timeout)).decode())


async def callbacks(client):
    """delay_with_callback: the final state reaches a PAIR0 listener."""
    address = free_address()
    with pynng.Pair0(listen=address) as listener:
        task_id = await client.delay_with_callback("add", address, 4, 5, callback_data={"k": "v"})
        message = await receive(listener)
        assert message["task_id"] == task_id, message
        assert (message["status"], message["result"]) == ("success", 9), message
        assert message["callback_data"] == {"k": "v"}, message
        assert message["started_at"] and message["completed_at"], message

        task_id = await client.delay_with_callback("boom", address, "kaput")
        message = await receive(listener)
        assert (message["task_id"], message["status"]) == (task_id, "failure"), message
        assert "ValueError: kaput" in message["error"], message

        # Many finishing together: every one arrives.
        ids = set()
        for i in range(10):
            ids.add(await client.delay_with_callback("add", address, i, 0))
        got = {(await receive(listener))["task_id"] for _ in range(10)}
        assert got == ids, (len(got), len(ids))

    # A receiver that starts listening only after the task has finished.
    late = free_address()
    task_id = await client.delay_with_callback("add", late, 1, 1)
    await wait_for_result(client, task_id, TaskStatus.SUCCESS)
    with pynng.Pair0(listen=late) as listener:
        message = await receive(listener)
        assert (message["task_id"], message["result"]) == (task_id, 2), message


async def main(discovery):
    client = Client(discovery_address=discovery, timeout=30, retries=0)
    await client.start()
    assert client.workers, "the control plane was discovered"

    # Blocking submit.
    result = await client.submit_task("add", args=(5, 3))
    assert result.status == TaskStatus.SUCCESS, result
    assert result.result == 8, result
    assert result.started_at is not None and result.completed_at is not None

    # Many at once, on every priority port: each gets its own result.
    priorities = [TaskPriority.LOW, TaskPriority.NORMAL, TaskPriority.HIGH, TaskPriority.CRITICAL]
    results = await asyncio.gather(
        *[client.submit_task("add", args=(i, 1000), priority=priorities[i % 4]) for i in range(60)]
    )
    for i, result in enumerate(results):
        assert result.status == TaskStatus.SUCCESS and result.result == i + 1000, (i, result)

    # delay() returns an id at once; the result is queryable.
    task_id = await client.delay("add", 2, 2, priority=TaskPriority.HIGH)
    result = await wait_for_result(client, task_id, TaskStatus.SUCCESS)
    assert result.result == 4, result

    # A task that raises.
    result = await client.submit_task("boom", args=("kaput",))
    assert result.status == TaskStatus.FAILURE, result
    assert "ValueError: kaput" in result.error, result

    # An unknown task is a failure naming the known ones.
    result = await client.submit_task("nope")
    assert result.status == TaskStatus.FAILURE, result
    assert "unknown task 'nope'" in result.error, result

    # delay(..., countdown=) is answered at once and runs once, after the countdown.
    started = time.monotonic()
    task_id = await client.delay("add", 20, 1, countdown=0.5)
    result = await wait_for_result(client, task_id, TaskStatus.SUCCESS)
    assert result.result == 21, result
    assert time.monotonic() - started >= 0.5
    assert result.started_at is not None

    # submit_batch: one message, every task queryable.
    ids = await client.submit_batch(
        [{"task_name": "add", "args": (i, 100)} for i in range(20)]
        + [{"task_name": "add", "args": (1, 1), "priority": TaskPriority.CRITICAL}]
    )
    assert len(ids) == 21
    for i, task_id in enumerate(ids[:20]):
        result = await wait_for_result(client, task_id, TaskStatus.SUCCESS)
        assert result.result == i + 100, (i, result)

    await callbacks(client)

    # Cancel a running task.
    task_id = await client.delay("sleep", 30)
    await wait_for_result(client, task_id, TaskStatus.RUNNING)
    assert await client.cancel_task(task_id) is True
    await wait_for_result(client, task_id, TaskStatus.CANCELLED)
    assert await client.cancel_task("no-such-task") is False
    assert await client.get_task_result("no-such-task") is None

    client.stop()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
