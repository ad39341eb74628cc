"""Tests of runners/python/fastworker_runner.py, run the way fastworker runs it:
`python -c <the file's text> ARGS...`, with fixture modules in a temporary
directory given as --root.

Standard library only. From the repository root:

    python3 -m unittest discover -s tests/python -v

The runner runs under the interpreter that runs the tests (so running them
with python3.9 checks 3.9). The tests against the real FastWorker package use
target/compat-venv/bin/python when it exists and are skipped otherwise.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNNER_TEXT = (REPO / "runners" / "python" / "fastworker_runner.py").read_text(encoding="utf-8")
PYTHON = sys.executable
VENV_PYTHON = REPO / "target" / "compat-venv" / "bin" / "python"
TIMEOUT = 120


def has_real_fastworker(python):
    probe = subprocess.run(
        [str(python), "-c", "import fastworker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    return probe.returncode == 0


SHIM_EXPECTED = not has_real_fastworker(PYTHON)
REAL_AVAILABLE = VENV_PYTHON.exists() and has_real_fastworker(VENV_PYTHON)

# FastWorker 0.3.0's `task`, as inspect.signature shows it.
TASK_SIGNATURE = (
    "(func_or_name=None, *, repeat_interval: 'Optional[float]' = None, "
    "cron: 'Optional[str]' = None, repeat_count: 'Optional[int]' = None, "
    "repeat_until: 'Optional[str]' = None, before: 'Optional[Callable]' = None, "
    "after: 'Optional[Callable]' = None)"
)

MODULES = {
    # Reads the attempt's trace context, as a task that opens child spans does.
    "traced.py": '''
        import os


        def context():
            return [os.environ.get("TRACEPARENT"), os.environ.get("TRACESTATE")]


        def who():
            return [os.environ.get(k) for k in
                    ("FASTWORKER_TASK_ID", "FASTWORKER_TASK_NAME", "FASTWORKER_ATTEMPT")]
    ''',
    # Every form of the decorator.
    "forms.py": '''
        """Every way FastWorker 0.3.0's @task is written."""
        import inspect

        import fastworker
        from fastworker import task
        from fastworker.tasks.registry import task as registry_task, task_registry


        @task
        def bare(x):
            """Returns x.

            More text."""
            return x


        @task()
        def empty_call(x):
            return x


        @task("named")
        def named_function(x):
            return x


        @task(repeat_interval=30)
        def every_30(x=None):
            return x


        @task(cron="*/5 * * * *", repeat_count=3, repeat_until="2026-12-31T00:00:00")
        def cron_job():
            return "cron"


        def start(task):
            pass


        async def finish(task):
            pass


        @task(before=start, after=finish)
        async def with_hooks(x):
            return x


        @registry_task("from_registry_module")
        def via_registry():
            return "registry"


        @task("")
        def empty_name():
            return None


        @task(repeat_interval=0)
        def zero_interval():
            return None


        @task(repeat_interval=2.5, repeat_until="2030-01-01")
        def short_date():
            return None


        def info():
            return {
                "version": fastworker.__version__,
                "same_task": registry_task is task,
                "registered": sorted(task_registry.list_tasks()),
                "periodic": sorted(task_registry.get_periodic_tasks()),
                "signature": str(inspect.signature(task)),
                "cron_schedule": [
                    task_registry.get_task_info("cron_job").schedule.cron_expression,
                    task_registry.get_task_info("cron_job").schedule.repeat_count,
                    task_registry.get_task_info("cron_job").schedule.repeat_until.isoformat(),
                ],
                "returns_function": task_registry.get_task("named") is named_function,
            }
    ''',
    # Decorator misuse: each fails at import, as in FastWorker.
    "bad_interval.py": """
        from fastworker import task

        @task(repeat_interval=-1)
        def f():
            pass
    """,
    "bad_both.py": """
        from fastworker import task

        @task(cron="* * * * *", repeat_interval=5)
        def f():
            pass
    """,
    "bad_until.py": """
        from fastworker import task

        @task(cron="* * * * *", repeat_until="not a date")
        def f():
            pass
    """,
    "bad_keyword.py": """
        from fastworker import task

        @task(name="x")
        def f():
            pass
    """,
    "bad_positional.py": """
        from fastworker import task

        @task("x", 30)
        def f():
            pass
    """,
    # The stand-in's limits.
    "uses_client.py": """
        from fastworker import Client

        def f():
            return 1
    """,
    "probes.py": """
        import importlib
        import inspect
        import fastworker


        def probe():
            out = {}
            try:
                fastworker.Client
            except ImportError as exc:
                out["attribute"] = str(exc)
            try:
                importlib.import_module("fastworker.clients")
            except ImportError as exc:
                out["submodule"] = str(exc)
            try:
                from fastworker.tasks.registry import Task
            except ImportError as exc:
                out["registry_name"] = str(exc)
            out["has_file"] = hasattr(fastworker, "__file__")
            out["getmodule"] = inspect.getmodule(probe).__name__
            out["all"] = fastworker.__all__
            return out
    """,
    # Hooks: every step is appended to the file named by $HOOK_LOG.
    "hooked.py": """
        import asyncio
        import os

        from fastworker import task


        def log(line):
            with open(os.environ["HOOK_LOG"], "a") as f:
                f.write(line + "\\n")


        def before_sync(task):
            log(
                "before %s %s %r %r %s %s %s %s"
                % (task.id, task.name, task.args, task.kwargs, task.attempt,
                   task.retry_count, task.priority, task.status)
            )


        async def before_async(task):
            await asyncio.sleep(0)
            log("before_async %s %s" % (task.id, task.priority.value))


        def after_sync(task):
            log("after %s" % task.id)


        async def after_async(task):
            await asyncio.sleep(0)
            log("after_async %s" % task.id)


        def broken_hook(task):
            raise RuntimeError("the hook broke")


        def add_kwarg(task):
            task.kwargs["added"] = True


        @task(before=before_sync, after=after_async)
        def add(a, b):
            print("add prints to stdout")
            log("call add")
            return a + b


        @task(before=before_async, after=after_sync)
        async def async_add(a, b):
            await asyncio.sleep(0)
            log("call async_add")
            return a + b


        @task(before=before_sync, after=after_sync)
        def fails(message):
            log("call fails")
            raise ValueError(message)


        @task(before=broken_hook, after=after_sync)
        def guarded():
            log("call guarded")
            return 1


        @task(before=before_sync, after=broken_hook)
        def guarded_after():
            log("call guarded_after")
            return 1


        @task(before=add_kwarg)
        def sees_kwargs(**kwargs):
            return kwargs


        @task
        def no_hooks(x):
            log("call no_hooks")
            return x


        def plain(x):
            print("plain prints")
            return x


        def plain_fails():
            raise KeyError("k")
    """,
    # Discovery.
    "disc_helper.py": """
        from fastworker import task

        @task
        def helper_task():
            return 1
    """,
    "disc_a.py": '''
        """Prints while importing: none of it may reach the JSON on stdout."""
        import os
        import sys

        import disc_helper  # registers helper_task
        from fastworker import task

        print("print() while importing disc_a")
        sys.stdout.write("sys.stdout.write while importing\\n")
        os.write(1, b"fd 1 while importing\\n")


        def log_start(task):
            pass


        def log_end(task):
            pass


        @task
        def add(a, b):
            """Adds two numbers.

            Longer text."""
            return a + b


        @task("every_minute", repeat_interval=60)
        async def ping():
            return "pong"


        @task(
            cron="0 * * * *",
            repeat_count=5,
            repeat_until="2026-12-31T00:00:00",
            before=log_start,
            after=log_end,
        )
        def hourly():
            """

            Runs hourly."""
            return None


        class Jobs:
            @staticmethod
            @task("static_job")
            def run():
                return "static"
    ''',
    "disc_dup.py": """
        from fastworker import task

        @task("add")
        def another_add():
            return 0
    """,
    "disc_dup_same_module.py": """
        from fastworker import task

        @task("twice")
        def first():
            return 1

        @task("twice")
        def second():
            return 2
    """,
    "disc_nested.py": """
        import functools

        from fastworker import task


        def make():
            @task
            def inner():
                return 1
            return inner


        make()


        def other_decorator(f):
            @functools.wraps(f)
            def wrapper(*args, **kwargs):
                return f(*args, **kwargs)
            return wrapper


        @other_decorator
        @task
        def wrapped():
            return 2


        @task
        def fine():
            return 3
    """,
    "disc_broken.py": """
        from fastworker import task

        @task
        def registered_before_the_error():
            return 1

        raise RuntimeError("disc_broken cannot be imported")
    """,
}


def line_of(source_name, marker, occurrence=1):
    """1-based line of the `occurrence`-th line of a fixture containing `marker`."""
    lines = textwrap.dedent(MODULES[source_name]).lstrip("\n").splitlines()
    seen = 0
    for number, line in enumerate(lines, 1):
        if marker in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{marker!r} not in {source_name}")


class RunnerTestCase(unittest.TestCase):
    python = PYTHON

    @classmethod
    def setUpClass(cls):
        cls.root = Path(tempfile.mkdtemp(prefix="fw-runner-test-"))
        for name, text in MODULES.items():
            (cls.root / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def setUp(self):
        self.log = self.root / f"hooks-{self.id().rsplit('.', 1)[-1]}.log"
        if self.log.exists():
            self.log.unlink()

    def runner(self, *args, stdin=b"", python=None, pythonpath=None):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        env["HOOK_LOG"] = str(self.log)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return subprocess.run(
            [str(python or self.python), "-c", RUNNER_TEXT, *args],
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tempfile.gettempdir(),
            timeout=TIMEOUT,
        )

    def oneshot(self, function, args=(), kwargs=None, python=None, **request):
        body = {
            "task_id": request.pop("task_id", "t-1"),
            "name": request.pop("name", function.split(":")[-1]),
            "args": list(args),
            "kwargs": kwargs or {},
            "attempt": request.pop("attempt", 1),
        }
        body.update(request)
        done = self.runner(
            "--mode", "oneshot", "--function", function, "--root", str(self.root),
            stdin=json.dumps(body).encode(),
            python=python,
        )
        return done.returncode, json.loads(done.stdout), done.stderr.decode()

    def discover(self, *modules, python=None):
        done = self.runner("--discover", "--root", str(self.root), *modules, python=python)
        stdout = done.stdout.decode()
        self.assertTrue(stdout.endswith("\n") and stdout.count("\n") == 1, stdout)
        return done.returncode, json.loads(stdout), done.stderr.decode()

    def check(self, *functions, python=None):
        args = []
        for function in functions:
            args += ["--function", function]
        done = self.runner("--check", "--root", str(self.root), *args, python=python)
        return done.returncode, json.loads(done.stdout), done.stderr.decode()

    def log_lines(self):
        return self.log.read_text().splitlines() if self.log.exists() else []


@unittest.skipUnless(SHIM_EXPECTED, "FastWorker is installed for this Python: no stand-in")
class StandInDecoratorTest(RunnerTestCase):
    def test_every_decorator_form_registers(self):
        code, report, stderr = self.discover("forms")
        self.assertEqual(code, 0, stderr)
        self.assertEqual(report["registry"], "shim")
        self.assertEqual(report["errors"], [])
        tasks = {t["name"]: t for t in report["tasks"]}
        self.assertEqual(
            [t["name"] for t in report["tasks"]],
            ["bare", "empty_call", "named", "every_30", "cron_job", "with_hooks",
             "from_registry_module", "empty_name", "zero_interval", "short_date"],
        )
        self.assertEqual(tasks["named"]["target"], "forms:named_function")
        self.assertEqual(tasks["empty_name"]["target"], "forms:empty_name")
        self.assertEqual(tasks["bare"]["doc"], "Returns x.")
        self.assertIsNone(tasks["empty_call"]["doc"])
        self.assertEqual(
            tasks["every_30"]["schedule"],
            {"every_seconds": 30.0, "cron": None, "count": None, "until": None},
        )
        self.assertIsInstance(tasks["every_30"]["schedule"]["every_seconds"], float)
        self.assertEqual(
            tasks["cron_job"]["schedule"],
            {"every_seconds": None, "cron": "*/5 * * * *", "count": 3, "until": "2026-12-31T00:00:00"},
        )
        # As given, not as datetime.isoformat() would write it.
        self.assertEqual(tasks["short_date"]["schedule"]["until"], "2030-01-01")
        # FastWorker ignores repeat_interval=0: no schedule.
        self.assertIsNone(tasks["zero_interval"]["schedule"])
        self.assertEqual(
            tasks["with_hooks"]["hooks"], {"before": "forms:start", "after": "forms:finish"}
        )
        self.assertTrue(tasks["with_hooks"]["is_async"])
        self.assertFalse(tasks["bare"]["is_async"])

    def test_the_stand_in_module(self):
        code, info, stderr = self.oneshot("forms:info")
        self.assertEqual(code, 0, stderr)
        self.assertEqual(info["version"], "0.3.0-fastworker-shim")
        self.assertTrue(info["same_task"])
        self.assertEqual(info["signature"], TASK_SIGNATURE)
        self.assertEqual(
            info["registered"],
            sorted(["bare", "empty_call", "named", "every_30", "cron_job", "with_hooks",
                    "from_registry_module", "empty_name", "zero_interval", "short_date"]),
        )
        self.assertEqual(info["periodic"], ["cron_job", "every_30", "short_date"])
        self.assertEqual(info["cron_schedule"], ["*/5 * * * *", 3, "2026-12-31T00:00:00"])
        self.assertTrue(info["returns_function"])
        # The decorator returns the function itself.
        code, result, stderr = self.oneshot("forms:named_function", [7])
        self.assertEqual((code, result), (0, 7), stderr)

    def test_decorator_misuse_fails_like_fastworker(self):
        code, report, stderr = self.discover(
            "bad_interval", "bad_both", "bad_until", "bad_keyword", "bad_positional"
        )
        self.assertEqual(code, 1, stderr)
        self.assertEqual(report["tasks"], [])
        errors = {e["module"]: e["error"] for e in report["errors"]}
        self.assertEqual(errors["bad_interval"], "ValueError: repeat_interval must be positive")
        self.assertEqual(
            errors["bad_both"], "ValueError: Cannot specify both cron_expression and repeat_interval"
        )
        self.assertEqual(errors["bad_until"], "ValueError: Invalid isoformat string: 'not a date'")
        self.assertEqual(
            errors["bad_keyword"], "TypeError: task() got an unexpected keyword argument 'name'"
        )
        self.assertIn(
            "TypeError: task() takes from 0 to 1 positional arguments", errors["bad_positional"]
        )
        # The traceback points at the module, not at the runner.
        tb = next(e["traceback"] for e in report["errors"] if e["module"] == "bad_interval")
        self.assertIn("bad_interval.py", tb)
        self.assertNotIn("<string>", tb)

    def test_import_of_anything_else_explains_the_stand_in(self):
        code, reply, stderr = self.oneshot("uses_client:f")
        self.assertEqual(code, 1, stderr)
        error = reply["error"]
        self.assertEqual(error["type"], "TaskLoadError")
        message = error["message"]
        self.assertIn("cannot import name 'Client' from 'fastworker'", message)
        self.assertIn("fastworker's stand-in inside the task runner", message)
        self.assertIn("provides only `task`", message)
        self.assertIn("install the real package in the runner's interpreter", message)
        self.assertIn(PYTHON, message)
        self.assertIn("ImportError: cannot import name 'Client'", error["traceback"])

        code, out, stderr = self.oneshot("probes:probe")
        self.assertEqual(code, 0, stderr)
        for key in ("attribute", "submodule", "registry_name"):
            self.assertIn("stand-in inside the task runner", out[key])
        self.assertIn("No module named 'fastworker.clients'", out["submodule"])
        self.assertFalse(out["has_file"])
        self.assertEqual(out["getmodule"], "probes")
        self.assertEqual(out["all"], ["task"])

    def test_a_broken_installed_package_gives_way_to_the_stand_in(self):
        broken = Path(tempfile.mkdtemp(prefix="fw-runner-broken-"))
        self.addCleanup(shutil.rmtree, broken, True)
        (broken / "fastworker").mkdir()
        (broken / "fastworker" / "__init__.py").write_text("import no_such_dependency_of_fastworker\n")
        (broken / "uses_task.py").write_text(
            "from fastworker import task\n\n@task\ndef f():\n    return 'ran'\n"
        )
        done = self.runner(
            "--mode", "oneshot", "--function", "uses_task:f", "--root", str(broken), stdin=b"{}"
        )
        self.assertEqual((done.returncode, done.stdout), (0, b'"ran"'), done.stderr)
        self.assertIn(
            b"the installed fastworker package cannot be imported "
            b"(ModuleNotFoundError: No module named 'no_such_dependency_of_fastworker')",
            done.stderr,
        )
        (broken / "uses_client.py").write_text("from fastworker import Client\n")
        done = self.runner("--check", "--root", str(broken), "--function", "uses_client:f")
        self.assertEqual(done.returncode, 1)
        [check] = json.loads(done.stdout)["checks"]
        self.assertIn("cannot be imported (ModuleNotFoundError", check["error"])
        self.assertIn("stand-in inside the task runner", check["error"])


class HookTest(RunnerTestCase):
    def test_sync_function_sync_before_async_after(self):
        code, result, stderr = self.oneshot(
            "hooked:add", [1, 2], task_id="t-add", name="add_task", attempt=3
        )
        self.assertEqual((code, result), (0, 3), stderr)
        self.assertEqual(
            self.log_lines(),
            ["before t-add add_task (1, 2) {} 3 2 normal running", "call add", "after_async t-add"],
        )
        self.assertIn("add prints to stdout", stderr)

    def test_async_function_async_before_sync_after(self):
        code, result, stderr = self.oneshot(
            "hooked:async_add", [2, 5], task_id="t-a", priority="high"
        )
        self.assertEqual((code, result), (0, 7), stderr)
        self.assertEqual(
            self.log_lines(), ["before_async t-a high", "call async_add", "after t-a"]
        )

    def test_after_does_not_run_when_the_function_fails(self):
        code, reply, stderr = self.oneshot("hooked:fails", ["no good"], task_id="t-f")
        self.assertEqual(code, 1, stderr)
        self.assertEqual(set(reply), {"error"})
        error = reply["error"]
        self.assertEqual((error["type"], error["message"]), ("ValueError", "no good"))
        self.assertNotIn("<string>", reply["error"]["traceback"])
        self.assertEqual(
            self.log_lines(), ["before t-f fails ('no good',) {} 1 0 normal running", "call fails"]
        )

    def test_a_failing_before_hook_fails_the_task(self):
        code, reply, stderr = self.oneshot("hooked:guarded")
        self.assertEqual(code, 1, stderr)
        error = reply["error"]
        self.assertEqual((error["type"], error["message"]), ("RuntimeError", "the hook broke"))
        self.assertIn("in broken_hook", error["traceback"])
        self.assertNotIn("<string>", error["traceback"])
        self.assertEqual(self.log_lines(), [])  # neither the function nor after ran

    def test_a_failing_after_hook_fails_the_task(self):
        code, reply, stderr = self.oneshot("hooked:guarded_after", task_id="t-g")
        self.assertEqual(code, 1, stderr)
        self.assertEqual(reply["error"]["message"], "the hook broke")
        self.assertEqual(
            self.log_lines(),
            ["before t-g guarded_after () {} 1 0 normal running", "call guarded_after"],
        )

    def test_a_before_hook_can_change_the_arguments(self):
        code, result, stderr = self.oneshot("hooked:sees_kwargs", kwargs={"k": 1})
        self.assertEqual((code, result), (0, {"k": 1, "added": True}), stderr)

    def test_tasks_without_hooks_and_plain_functions(self):
        code, result, stderr = self.oneshot("hooked:no_hooks", ["x"])
        self.assertEqual((code, result), (0, "x"), stderr)
        self.assertEqual(self.log_lines(), ["call no_hooks"])
        # Plain functions: the result alone on stdout, prints on stderr.
        done = self.runner(
            "--mode", "oneshot", "--function", "hooked:plain", "--root", str(self.root),
            stdin=b'{"task_id":"t","name":"plain","args":[{"a":[1,2]}],"kwargs":{},"attempt":1}',
        )
        self.assertEqual((done.returncode, done.stdout), (0, b'{"a":[1,2]}'))
        self.assertIn(b"plain prints\n", done.stderr)
        code, reply, _ = self.oneshot("hooked:plain_fails")
        self.assertEqual(code, 1)
        self.assertEqual(set(reply["error"]), {"type", "message", "traceback"})
        self.assertEqual((reply["error"]["type"], reply["error"]["message"]), ("KeyError", "'k'"))

    def test_pool_mode_with_hooks_across_requests(self):
        requests = [
            {"id": 1, "task_id": "p-1", "name": "add", "args": [1, 2], "kwargs": {}, "attempt": 1},
            {"id": 2, "task_id": "p-2", "name": "add", "args": [3, 4], "kwargs": {}, "attempt": 2},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
        done = self.runner(
            "--mode", "pool", "--function", "hooked:add", "--root", str(self.root), stdin=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, b'{"id":1,"ok":3}\n{"id":2,"ok":7}\n')
        self.assertEqual(
            self.log_lines(),
            [
                "before p-1 add (1, 2) {} 1 0 normal running",
                "call add",
                "after_async p-1",
                "before p-2 add (3, 4) {} 2 1 normal running",
                "call add",
                "after_async p-2",
            ],
        )

    def test_pool_mode_failure_then_success(self):
        requests = [
            {"id": 1, "task_id": "p-1", "name": "fails", "args": ["first"], "kwargs": {}, "attempt": 1},
            {"id": 2, "task_id": "p-2", "name": "fails", "args": [], "kwargs": {}, "attempt": 1},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
        done = self.runner(
            "--mode", "pool", "--function", "hooked:async_add", "--root", str(self.root), stdin=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line) for line in done.stdout.decode().splitlines()]
        self.assertEqual([r["id"] for r in replies], [1, 2])
        self.assertEqual(replies[0]["error"]["type"], "TypeError")
        self.assertEqual(replies[1]["error"]["type"], "TypeError")
        # before ran for both, the function failed, after never ran.
        self.assertEqual(self.log_lines(), ["before_async p-1 normal", "before_async p-2 normal"])


@unittest.skipUnless(SHIM_EXPECTED, "FastWorker is installed for this Python: no stand-in")
class DiscoveryTest(RunnerTestCase):
    def test_discovery_report(self):
        code, report, stderr = self.discover("disc_a", "disc_dup", "no_such_module", "disc_broken")
        self.assertEqual(code, 1, stderr)
        self.assertEqual(report["python"], sys.version.split()[0])
        self.assertEqual(report["registry"], "shim")
        self.assertEqual(
            [t["name"] for t in report["tasks"]],
            ["helper_task", "every_minute", "hourly", "static_job"],
        )
        tasks = {t["name"]: t for t in report["tasks"]}
        a_file = str((self.root / "disc_a.py").resolve())
        self.assertEqual(
            tasks["every_minute"],
            {
                "name": "every_minute",
                "target": "disc_a:ping",
                "module": "disc_a",
                "file": a_file,
                "line": line_of("disc_a.py", '@task("every_minute"'),
                "doc": None,
                "is_async": True,
                "schedule": {"every_seconds": 60.0, "cron": None, "count": None, "until": None},
                "hooks": {"before": None, "after": None},
            },
        )
        self.assertEqual(
            tasks["hourly"]["schedule"],
            {"every_seconds": None, "cron": "0 * * * *", "count": 5, "until": "2026-12-31T00:00:00"},
        )
        self.assertEqual(
            tasks["hourly"]["hooks"], {"before": "disc_a:log_start", "after": "disc_a:log_end"}
        )
        self.assertEqual(tasks["hourly"]["doc"], "Runs hourly.")
        self.assertEqual(tasks["helper_task"]["target"], "disc_helper:helper_task")
        helper_file = str((self.root / "disc_helper.py").resolve())
        self.assertEqual(tasks["helper_task"]["file"], helper_file)
        self.assertEqual(tasks["static_job"]["target"], "disc_a:Jobs.run")

        errors = report["errors"]
        by_module = {e["module"]: e for e in errors if e["task"] is None}
        self.assertEqual(
            by_module["no_such_module"]["error"], "ModuleNotFoundError: No module named 'no_such_module'"
        )
        self.assertEqual(
            by_module["disc_broken"]["error"], "RuntimeError: disc_broken cannot be imported"
        )
        self.assertIn("disc_broken.py", by_module["disc_broken"]["traceback"])
        # The duplicate name: both places, and neither is listed as a task.
        duplicate = [e for e in errors if e["task"] == "add"]
        self.assertEqual(len(duplicate), 1, errors)
        self.assertEqual(duplicate[0]["module"], "disc_dup")
        # The line of a decorated function is that of its first decorator.
        add_line = line_of("disc_a.py", "def add") - 1
        self.assertIn("disc_a:add at %s:%d" % (a_file, add_line), duplicate[0]["error"])
        self.assertIn(
            "%s:%d" % (str((self.root / "disc_dup.py").resolve()), line_of("disc_dup.py", "@task")),
            duplicate[0]["error"],
        )
        # A module whose import failed contributes its error, not its tasks.
        self.assertNotIn("registered_before_the_error", [e["task"] for e in errors])
        self.assertEqual(len(errors), 3, errors)
        # Prints while importing went to stderr.
        self.assertIn("print() while importing disc_a", stderr)
        self.assertIn("fd 1 while importing", stderr)

    def test_targets_resolve_with_check_mode(self):
        code, report, stderr = self.discover("disc_a", "forms")
        self.assertEqual(code, 0, stderr)
        self.assertEqual(report["errors"], [])
        targets = [t["target"] for t in report["tasks"]]
        code, checks, stderr = self.check(*targets)
        self.assertEqual(code, 0, stderr)
        self.assertEqual(checks["checks"], [{"function": t, "ok": True} for t in targets])

    def test_duplicate_in_one_module(self):
        code, report, stderr = self.discover("disc_dup_same_module")
        self.assertEqual(code, 0, stderr)  # every module imported
        self.assertEqual(report["tasks"], [])
        [error] = report["errors"]
        self.assertEqual((error["module"], error["task"]), ("disc_dup_same_module", "twice"))
        path = str((self.root / "disc_dup_same_module.py").resolve())
        for occurrence, function in ((1, "first"), (2, "second")):
            line = line_of("disc_dup_same_module.py", "@task", occurrence)
            self.assertIn(
                "disc_dup_same_module:%s at %s:%d" % (function, path, line), error["error"]
            )

    def test_functions_that_are_not_module_level(self):
        code, report, stderr = self.discover("disc_nested")
        self.assertEqual(code, 0, stderr)
        self.assertEqual([t["target"] for t in report["tasks"]], ["disc_nested:fine"])
        errors = {e["task"]: e["error"] for e in report["errors"]}
        self.assertIn(
            "disc_nested:make.<locals>.inner is defined inside a function", errors["inner"]
        )
        self.assertIn("must be a module-level function", errors["inner"])
        self.assertIn("disc_nested:wrapped is not the function @task registered", errors["wrapped"])
        self.assertIn("must be a module-level function", errors["wrapped"])

    def test_modules_on_pythonpath(self):
        elsewhere = Path(tempfile.mkdtemp(prefix="fw-runner-path-"))
        self.addCleanup(shutil.rmtree, elsewhere, True)
        (elsewhere / "on_path.py").write_text(
            "from fastworker.tasks.registry import task\n\n@task\ndef far():\n    return 1\n"
        )
        done = self.runner(
            "--discover", "--root", str(self.root), "on_path", "disc_helper", pythonpath=elsewhere
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertEqual(
            [(t["target"], t["file"], t["line"]) for t in report["tasks"]],
            [
                ("on_path:far", str((elsewhere / "on_path.py").resolve()), 3),
                ("disc_helper:helper_task", str((self.root / "disc_helper.py").resolve()), 3),
            ],
        )

    def test_usage_errors(self):
        done = self.runner("--discover", "--root", str(self.root))
        self.assertEqual(done.returncode, 2)
        self.assertIn(b"--discover needs at least one module name", done.stderr)
        done = self.runner("--check", "--root", str(self.root))
        self.assertEqual(done.returncode, 2)
        done = self.runner("--root", str(self.root), "--function", "m:f")
        self.assertEqual(done.returncode, 2)
        self.assertIn(b"the following arguments are required: --mode", done.stderr)
        done = self.runner("--mode", "pool", "--function", "m:f", "extra")
        self.assertEqual(done.returncode, 2)
        self.assertIn(b"unrecognized arguments: extra", done.stderr)


class CheckTest(RunnerTestCase):
    def test_check(self):
        code, report, stderr = self.check(
            "hooked:add", "hooked:nope", "no_such_module:f", "disc_broken:registered_before_the_error"
        )
        self.assertEqual(code, 1, stderr)
        self.assertEqual(
            report["checks"],
            [
                {"function": "hooked:add", "ok": True},
                {"function": "hooked:nope", "ok": False, "error": "module 'hooked' has no attribute 'nope'"},
                {
                    "function": "no_such_module:f",
                    "ok": False,
                    "error": "cannot import module 'no_such_module' for no_such_module:f: "
                    "No module named 'no_such_module'",
                },
                {
                    "function": "disc_broken:registered_before_the_error",
                    "ok": False,
                    "error": "cannot import module 'disc_broken' for "
                    "disc_broken:registered_before_the_error: disc_broken cannot be imported",
                },
            ],
        )
        code, report, stderr = self.check("hooked:add", "forms:bare")
        expected = [{"function": "hooked:add", "ok": True}, {"function": "forms:bare", "ok": True}]
        self.assertEqual((code, report), (0, {"checks": expected}), stderr)


@unittest.skipUnless(REAL_AVAILABLE, f"no FastWorker 0.3.0 in {VENV_PYTHON}")
class RealFastWorkerTest(RunnerTestCase):
    """The same modules with the real FastWorker package: its registry is read."""

    python = VENV_PYTHON

    def test_discovery_with_the_real_registry(self):
        code, report, stderr = self.discover("forms", "disc_a", "disc_dup")
        self.assertEqual(code, 0, stderr)
        self.assertEqual(report["registry"], "fastworker")
        names = [t["name"] for t in report["tasks"]]
        self.assertEqual(
            names,
            ["bare", "empty_call", "named", "every_30", "cron_job", "with_hooks",
             "from_registry_module", "empty_name", "zero_interval", "short_date",
             "helper_task", "every_minute", "hourly", "static_job"],
        )
        tasks = {t["name"]: t for t in report["tasks"]}
        self.assertEqual(
            tasks["cron_job"]["schedule"],
            {"every_seconds": None, "cron": "*/5 * * * *", "count": 3, "until": "2026-12-31T00:00:00"},
        )
        self.assertEqual(tasks["short_date"]["schedule"]["until"], "2030-01-01")
        self.assertEqual(
            tasks["with_hooks"]["hooks"], {"before": "forms:start", "after": "forms:finish"}
        )
        self.assertEqual([e["task"] for e in report["errors"]], ["add"])

    def test_same_report_as_the_stand_in(self):
        if not SHIM_EXPECTED:
            self.skipTest("no stand-in for this Python")
        modules = ("forms", "disc_a", "disc_dup", "disc_nested", "bad_interval")
        real = self.discover(*modules)
        shim = self.discover(*modules, python=PYTHON)
        self.assertEqual(real[0], shim[0])
        for report in (real[1], shim[1]):
            del report["python"], report["registry"]
            for error in report["errors"]:
                error["traceback"] = None  # frames differ between the two
        self.assertEqual(real[1], shim[1])

    def test_the_real_package_is_used(self):
        code, info, stderr = self.oneshot("forms:info")
        self.assertEqual(code, 0, stderr)
        self.assertEqual(info["version"], "0.3.0")
        self.assertEqual(info["signature"], TASK_SIGNATURE)

    def test_hooks_with_the_real_registry(self):
        code, result, stderr = self.oneshot("hooked:add", [1, 2], task_id="r-1")
        self.assertEqual((code, result), (0, 3), stderr)
        code, result, stderr = self.oneshot("hooked:async_add", [1, 2], task_id="r-2")
        self.assertEqual((code, result), (0, 3), stderr)
        code, reply, stderr = self.oneshot("hooked:fails", ["x"], task_id="r-3")
        self.assertEqual(code, 1, stderr)
        self.assertEqual(
            self.log_lines(),
            [
                "before r-1 add (1, 2) {} 1 0 normal running",
                "call add",
                "after_async r-1",
                "before_async r-2 normal",
                "call async_add",
                "after r-2",
                "before r-3 fails ('x',) {} 1 0 normal running",
                "call fails",
            ],
        )

    def test_pool_mode_with_the_real_registry(self):
        requests = [
            {"id": 1, "task_id": "p-1", "name": "add", "args": [1, 2], "kwargs": {}, "attempt": 1},
            {"id": 2, "task_id": "p-2", "name": "add", "args": [3, 4], "kwargs": {}, "attempt": 1},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
        done = self.runner(
            "--mode", "pool", "--function", "hooked:add", "--root", str(self.root), stdin=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, b'{"id":1,"ok":3}\n{"id":2,"ok":7}\n')
        self.assertEqual(
            [line.split()[0] for line in self.log_lines()],
            ["before", "call", "after_async", "before", "call", "after_async"],
        )


if __name__ == "__main__":
    unittest.main()


class TraceContextTest(RunnerTestCase):
    """The attempt's W3C trace context reaches the task: in os.environ for
    the call, in pool mode per request (a pool process serves many tasks)."""

    def test_each_request_sees_its_own_traceparent(self):
        first = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        second = "00-11111111111111111111111111111111-2222222222222222-01"
        requests = [
            {"id": 1, "task_id": "a", "name": "context", "args": [], "kwargs": {}, "attempt": 1,
             "traceparent": first, "tracestate": "k=v"},
            {"id": 2, "task_id": "b", "name": "context", "args": [], "kwargs": {}, "attempt": 1,
             "traceparent": second},
            {"id": 3, "task_id": "c", "name": "context", "args": [], "kwargs": {}, "attempt": 1},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
        done = self.runner(
            "--mode", "pool", "--function", "traced:context", "--root", str(self.root), stdin=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line)["ok"] for line in done.stdout.decode().splitlines()]
        self.assertEqual(replies, [[first, "k=v"], [second, None], [None, None]])

    def test_each_request_sees_its_task_id_name_and_attempt(self):
        requests = [
            {"id": 1, "task_id": "a", "name": "who", "args": [], "kwargs": {}, "attempt": 1},
            {"id": 2, "task_id": "b", "name": "who", "args": [], "kwargs": {}, "attempt": 3},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
        done = self.runner(
            "--mode", "pool", "--function", "traced:who", "--root", str(self.root), stdin=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line)["ok"] for line in done.stdout.decode().splitlines()]
        self.assertEqual(replies, [["a", "who", "1"], ["b", "who", "3"]])
