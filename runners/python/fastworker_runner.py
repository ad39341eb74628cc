"""fastworker's Python runner: calls `module:function` for fastworker tasks.

Standard library only, Python >= 3.9. Started by fastworker as

    python fastworker_runner.py --mode oneshot|pool --function module:func --root DIR

(fastworker passes this file's text with `-c`, so nothing needs installing).

Modes (the child contract, docs/protocol.md):
- oneshot: read one JSON request from stdin until EOF, call the function, write
  exactly one JSON value (the result) to stdout and exit 0. On an exception,
  write {"error": {"type", "message", "traceback"}} and exit 1.
- pool: read JSON Lines requests ({"id", "task_id", "name", "args", "kwargs",
  "attempt"}) and answer each with one line, {"id", "ok": result} or
  {"id", "error": {...}}, until stdin closes.

The protocol streams are private duplicates of fds 0 and 1, made before any
task code runs. Fd 1 is then pointed at stderr and fd 0 at /dev/null, so
whatever a task prints (print(), C extensions, subprocesses) lands in stderr
and can never corrupt a result.

Two more modes inspect task modules instead of running them:
- --discover --root DIR MODULE [MODULE ...]: imports the modules and prints
  one JSON object, {"python", "registry", "tasks", "errors"}, describing the
  functions they register with FastWorker's `@task`. Exit 0 if every module
  imported, 1 if not.
- --check --root DIR --function module:function [--function ...]: imports
  each function as the run modes would and prints {"checks": [{"function",
  "ok", "error"?}]}. Exit 0 if all of them load, 1 if not.

FastWorker 0.3.0 compatibility: task modules written for the Python package
FastWorker do `from fastworker import task`. If that package cannot be
imported, a stand-in `fastworker` module (with `fastworker.tasks` and
`fastworker.tasks.registry`) provides `task` with the original's signature
and checks. Either way, a function registered with before/after hooks gets
`before(task)` before it is called and `after(task)` after it returned.
"""

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
import traceback

MIN_PYTHON = (3, 9)


class TaskLoadError(Exception):
    """The configured function could not be imported."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="fastworker_runner",
        usage="%(prog)s --mode oneshot|pool --function MODULE:FUNCTION [--root DIR]\n"
        "       %(prog)s --discover [--root DIR] MODULE [MODULE ...]\n"
        "       %(prog)s --check [--root DIR] --function MODULE:FUNCTION [--function ...]",
    )
    parser.add_argument("--mode", choices=("oneshot", "pool"), help="run mode")
    parser.add_argument(
        "--function",
        action="append",
        metavar="MODULE:FUNCTION",
        help="module:function (one for --mode, one or more for --check)",
    )
    parser.add_argument("--root", default=".", help="directory modules are found in")
    parser.add_argument(
        "--discover", action="store_true", help="list the tasks the MODULEs register, as JSON"
    )
    parser.add_argument(
        "--check", action="store_true", help="check that each --function imports, as JSON"
    )
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="modules for --discover")
    options = parser.parse_intermixed_args(argv)
    if options.discover and options.check:
        parser.error("--discover and --check cannot be used together")
    if options.discover or options.check:
        mode = "--discover" if options.discover else "--check"
        if options.mode is not None:
            parser.error(f"{mode} does not take --mode")
        if options.discover and options.function:
            parser.error("--discover takes module names, not --function")
        if options.discover and not options.modules:
            parser.error("--discover needs at least one module name")
        if options.check and not options.function:
            parser.error("--check needs at least one --function MODULE:FUNCTION")
        if options.check and options.modules:
            parser.error(f"unrecognized arguments: {' '.join(options.modules)}")
        return options
    missing = [
        flag
        for flag, value in (("--mode", options.mode), ("--function", options.function))
        if value is None
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if options.modules:
        parser.error(f"unrecognized arguments: {' '.join(options.modules)}")
    # The last --function wins, as it did when the option was a plain store.
    options.function = options.function[-1]
    return options


def take_protocol_streams():
    """Duplicates stdin/stdout for the protocol and makes fd 1 write to stderr."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # sys.stdout still wraps fd 1, which now is stderr; make it line-buffered
    # so prints show up in fastworker's stderr tail in order.
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
    return proto_in, proto_out


# ---------------------------------------------------------------------------
# FastWorker 0.3.0 compatibility.
#
# Task modules written for the Python package FastWorker register functions
# with `from fastworker import task`. If that package imports in this
# interpreter it is used as it is; if not, a stand-in `fastworker` module
# provides `task`, so the modules run unchanged. Either way, a task's
# before/after hooks are called around it (Target.call_with_hooks).

SHIM_VERSION = "0.3.0-fastworker-shim"

# "fastworker" (the real package) or "shim", once use_fastworker() has run.
FASTWORKER_KIND = None
# Why an installed FastWorker package could not be used, if one could not.
FASTWORKER_PROBLEM = None
# The stand-in's top-level module, once installed.
SHIM_PACKAGE = None


def use_fastworker():
    """Imports FastWorker, or installs the stand-in if that fails. Returns
    "fastworker" or "shim". Meant to run before any task module is imported."""
    global FASTWORKER_KIND, FASTWORKER_PROBLEM
    if FASTWORKER_KIND is None:
        try:
            importlib.import_module("fastworker")
            FASTWORKER_KIND = "fastworker"
        except Exception as exc:
            if not (isinstance(exc, ModuleNotFoundError) and exc.name == "fastworker"):
                # Installed, but broken (a missing dependency, say).
                FASTWORKER_PROBLEM = f"{type(exc).__name__}: {exc}"
                sys.stderr.write(
                    "fastworker_runner: the installed fastworker package cannot be imported "
                    f"({FASTWORKER_PROBLEM}); task modules get the runner's stand-in, "
                    "which provides only `task`\n"
                )
            partial = [n for n in sys.modules if n == "fastworker" or n.startswith("fastworker.")]
            for name in partial:
                del sys.modules[name]
            install_shim()
            FASTWORKER_KIND = "shim"
    return FASTWORKER_KIND


class ScheduleConfig:
    """FastWorker 0.3.0's schedule of a periodic task, with the same checks."""

    def __init__(
        self, repeat_interval=None, cron_expression=None, repeat_count=None, repeat_until=None
    ):
        self.repeat_interval = repeat_interval  # seconds between executions
        self.cron_expression = cron_expression  # 5-field cron: "min hour dom month dow"
        self.repeat_count = repeat_count  # max number of executions (None = unlimited)
        self.repeat_until = repeat_until  # a datetime: stop repeating after it
        if self.repeat_interval is not None and self.repeat_interval <= 0:
            raise ValueError("repeat_interval must be positive")
        if self.cron_expression and self.repeat_interval:
            raise ValueError("Cannot specify both cron_expression and repeat_interval")
        if not self.cron_expression and not self.repeat_interval:
            raise ValueError("Must specify either cron_expression or repeat_interval")

    def _fields(self):
        return (self.repeat_interval, self.cron_expression, self.repeat_count, self.repeat_until)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None

    def __repr__(self):
        return (
            "ScheduleConfig(repeat_interval=%r, cron_expression=%r, repeat_count=%r, "
            "repeat_until=%r)" % self._fields()
        )


class TaskInfo:
    """Metadata about a registered task (FastWorker 0.3.0's TaskInfo)."""

    def __init__(self, func, name, module="", schedule=None, before=None, after=None):
        self.func = func
        self.name = name
        self.module = module
        self.schedule = schedule
        self.before = before
        self.after = after

    def __repr__(self):
        return "TaskInfo(func=%r, name=%r, module=%r, schedule=%r, before=%r, after=%r)" % (
            self.func,
            self.name,
            self.module,
            self.schedule,
            self.before,
            self.after,
        )


class TaskRegistry:
    """Registry for task functions (FastWorker 0.3.0's TaskRegistry)."""

    def __init__(self):
        self._tasks = {}

    def register(self, func, name=None, schedule=None, before=None, after=None):
        """Register a function as a task."""
        task_name = name or func.__name__
        logger = logging.getLogger("fastworker.tasks.registry")
        if task_name in self._tasks:
            logger.warning(f"Task {task_name} is already registered. Overwriting.")
        self._tasks[task_name] = TaskInfo(
            func=func,
            name=task_name,
            module=func.__module__,
            schedule=schedule,
            before=before,
            after=after,
        )
        logger.info(f"Registered task: {task_name}")
        record_registration(
            task_name, func, schedule, before, after, getattr(schedule, "_until_given", None)
        )
        return func

    def get_task(self, name):
        """Get a registered task function by name."""
        info = self._tasks.get(name)
        return info.func if info else None

    def get_task_info(self, name):
        """Get full TaskInfo for a registered task."""
        return self._tasks.get(name)

    def list_tasks(self):
        """List all registered tasks (func only)."""
        return {name: info.func for name, info in self._tasks.items()}

    def list_task_infos(self):
        """List all registered tasks with full metadata."""
        return self._tasks.copy()

    def get_periodic_tasks(self):
        """Get tasks that have a schedule configured."""
        return {name: info for name, info in self._tasks.items() if info.schedule is not None}


SHIM_REGISTRY = TaskRegistry()


def task(
    func_or_name=None,
    *,
    repeat_interval: "Optional[float]" = None,
    cron: "Optional[str]" = None,
    repeat_count: "Optional[int]" = None,
    repeat_until: "Optional[str]" = None,
    before: "Optional[Callable]" = None,
    after: "Optional[Callable]" = None,
):
    """Decorator to register a function as a task.

    Args:
        repeat_interval: Seconds between periodic executions.
        cron: 5-field cron expression for scheduling.
        repeat_count: Max number of executions (None = unlimited).
        repeat_until: ISO datetime string to stop repeating after.
        before: Hook called before task execution.
        after: Hook called after task execution.
    """
    # FastWorker 0.3.0's decorator, line for line, registering in the stand-in.
    from datetime import datetime as dt

    schedule = None
    if repeat_interval or cron:
        schedule = ScheduleConfig(
            repeat_interval=repeat_interval,
            cron_expression=cron,
            repeat_count=repeat_count,
            repeat_until=dt.fromisoformat(repeat_until) if repeat_until else None,
        )
        schedule._until_given = repeat_until if repeat_until else None

    def decorator(f):
        task_name = f.__name__
        SHIM_REGISTRY.register(f, task_name, schedule=schedule, before=before, after=after)
        return f

    # Check if called as @task or @task(...)
    if callable(func_or_name):
        return decorator(func_or_name)
    else:

        def named_decorator(f):
            task_name = func_or_name or f.__name__
            SHIM_REGISTRY.register(f, task_name, schedule=schedule, before=before, after=after)
            return f

        if func_or_name is not None:
            return named_decorator
        return decorator


for _shim_class in (ScheduleConfig, TaskInfo, TaskRegistry):
    _shim_class.__module__ = "fastworker.tasks.registry"
task.__module__ = "fastworker.tasks.registry"


def shim_message(what, provided):
    """The ImportError message for anything the stand-in does not have."""
    if FASTWORKER_PROBLEM:
        why = (
            "the FastWorker package installed in the runner's interpreter "
            f"({sys.executable}) cannot be imported ({FASTWORKER_PROBLEM})"
        )
    else:
        why = (
            "the FastWorker package is not installed in the runner's interpreter "
            f"({sys.executable})"
        )
    return (
        f"{what}: this 'fastworker' is fastworker's stand-in inside the task runner, "
        f"used because {why}. The stand-in provides only {provided}. To use the rest of "
        "FastWorker in tasks, install the real package in the runner's interpreter: "
        f"{sys.executable} -m pip install fastworker"
    )


class StandInFinder:
    """Answers an import of a fastworker submodule the stand-in does not have
    with the stand-in's explanation instead of a bare "No module named"."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if (
            SHIM_PACKAGE is not None
            and name.startswith("fastworker.")
            and sys.modules.get("fastworker") is SHIM_PACKAGE
        ):
            raise ImportError(shim_message(f"No module named '{name}'", "`task`"), name=name)
        return None


def install_shim():
    """Puts the stand-in modules fastworker, fastworker.tasks and
    fastworker.tasks.registry in sys.modules."""
    global SHIM_PACKAGE
    import importlib.machinery
    import types

    def stand_in(name, is_package, provided, attrs):
        module = types.ModuleType(name, f"fastworker_runner's stand-in for {name}")
        module.__spec__ = importlib.machinery.ModuleSpec(
            name, None, origin="fastworker_runner stand-in", is_package=is_package
        )
        module.__loader__ = None
        module.__package__ = name if is_package else name.rpartition(".")[0]
        if is_package:
            module.__path__ = []

        def __getattr__(attr):
            # Dunder and private names stay AttributeErrors: hasattr() and
            # getattr(m, "__file__", None) probes (inspect, pickle) rely on it.
            if attr.startswith("_"):
                raise AttributeError(f"module '{name}' has no attribute '{attr}'")
            raise ImportError(
                shim_message(f"cannot import name '{attr}' from '{name}'", provided), name=name
            )

        module.__getattr__ = __getattr__
        module.__dict__.update(attrs)
        sys.modules[name] = module
        return module

    registry = stand_in(
        "fastworker.tasks.registry",
        False,
        "`task` and `task_registry`",
        {
            "task": task,
            "task_registry": SHIM_REGISTRY,
            "TaskRegistry": TaskRegistry,
            "TaskInfo": TaskInfo,
            "ScheduleConfig": ScheduleConfig,
        },
    )
    tasks = stand_in(
        "fastworker.tasks",
        True,
        "`task` and `task_registry`",
        {
            "task": task,
            "task_registry": SHIM_REGISTRY,
            "registry": registry,
            "__all__": ["task", "task_registry"],
        },
    )
    SHIM_PACKAGE = stand_in(
        "fastworker",
        True,
        "`task` (from fastworker import task)",
        {"task": task, "tasks": tasks, "__version__": SHIM_VERSION, "__all__": ["task"]},
    )
    if StandInFinder not in sys.meta_path:
        sys.meta_path.append(StandInFinder)


def current_registry():
    """FastWorker's task_registry, or the stand-in's; None if neither is imported."""
    try:
        return getattr(sys.modules.get("fastworker.tasks.registry"), "task_registry", None)
    except Exception:
        return None


def registered_hooks(func):
    """(TaskInfo, before, after) when `func` is a registered task (found by
    identity in the registry in use) with a before or an after hook; else None."""
    registry = current_registry()
    if registry is None:
        return None
    try:
        infos = list(registry.list_task_infos().values())
    except Exception:
        return None
    for info in reversed(infos):
        if getattr(info, "func", None) is func:
            before = getattr(info, "before", None)
            after = getattr(info, "after", None)
            if before is None and after is None:
                return None
            return info, before, after
    return None


class Choice(str):
    """A string that also has .value, as FastWorker's TaskPriority and
    TaskStatus (str enums) have, so hooks written for them keep working."""

    __slots__ = ()

    @property
    def value(self):
        return str(self)


class HookTask:
    """The `task` a before/after hook gets: what FastWorker 0.3.0 passed
    (its Task model), made from the request."""

    def __init__(self, request, args, kwargs, registered_name):
        name = request.get("name")
        attempt = request.get("attempt")
        if type(attempt) is not int or attempt < 1:
            attempt = 1
        priority = request.get("priority")
        self.id = request.get("task_id")
        self.name = name if isinstance(name, str) and name else registered_name
        self.args = tuple(args)
        self.kwargs = kwargs
        self.attempt = attempt
        self.retry_count = attempt - 1
        self.priority = Choice(priority if isinstance(priority, str) and priority else "normal")
        self.status = Choice("running")

    def __repr__(self):
        return (
            "Task(id=%r, name=%r, args=%r, kwargs=%r, attempt=%r, retry_count=%r, "
            "priority=%r, status=%r)"
            % (
                self.id,
                self.name,
                self.args,
                self.kwargs,
                self.attempt,
                self.retry_count,
                str(self.priority),
                str(self.status),
            )
        )


# ---------------------------------------------------------------------------
# --discover: what the task modules register.


class Registration:
    """One call of the registry's register(), in order."""

    __slots__ = ("name", "func", "schedule", "before", "after", "until", "during")

    def __init__(self, name, func, schedule, before, after, until, during):
        self.name = name
        self.func = func
        self.schedule = schedule
        self.before = before
        self.after = after
        self.until = until
        self.during = during


# While --discover imports modules: every registration, and the index of the
# module being imported.
RECORDER = None
IMPORTING = None


def record_registration(name, func, schedule, before, after, until):
    if RECORDER is None:
        return
    if until is None:
        repeat_until = getattr(schedule, "repeat_until", None)
        if repeat_until is not None and hasattr(repeat_until, "isoformat"):
            until = repeat_until.isoformat()
    RECORDER.append(Registration(name, func, schedule, before, after, until, IMPORTING))


def record_fastworker_registrations():
    """Makes the real package's registry report every registration, in order
    and with duplicates (its dict keeps only the last one of a name), and
    keeps the repeat_until string each @task(...) was given."""
    import functools

    module = sys.modules.get("fastworker.tasks.registry")
    registry = getattr(module, "task_registry", None)
    register = getattr(registry, "register", None)
    if register is None:
        return
    try:
        signature = inspect.signature(register)
    except (TypeError, ValueError):
        return
    until_given = []

    @functools.wraps(register)
    def recording_register(*args, **kwargs):
        result = register(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            func = values.get("func")
            record_registration(
                values.get("name") or getattr(func, "__name__", None),
                func,
                values.get("schedule"),
                values.get("before"),
                values.get("after"),
                until_given[-1] if until_given else None,
            )
        except Exception:
            pass
        return result

    registry.register = recording_register

    real_task = getattr(module, "task", None)
    if not callable(real_task):
        return

    @functools.wraps(real_task)
    def recording_task(*args, **kwargs):
        given = kwargs.get("repeat_until") or None
        until_given.append(given)
        try:
            result = real_task(*args, **kwargs)
        finally:
            until_given.pop()
        if (args and callable(args[0])) or not callable(result):
            return result

        @functools.wraps(result)
        def decorator(f):
            until_given.append(given)
            try:
                return result(f)
            finally:
                until_given.pop()

        return decorator

    for name in ("fastworker", "fastworker.tasks", "fastworker.tasks.registry"):
        holder = sys.modules.get(name)
        if getattr(holder, "task", None) is real_task:
            setattr(holder, "task", recording_task)


def callable_name(obj):
    """module:qualname of a hook, or its repr; None for no hook."""
    if obj is None:
        return None
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return repr(obj)


def source_place(obj):
    """(absolute file, first line) of a function's source, or (None, None).
    The first line is that of its first decorator, as in inspect."""
    try:
        obj = inspect.unwrap(obj)
    except ValueError:
        pass
    code = getattr(obj, "__code__", None)
    try:
        if code is not None:
            filename, line = code.co_filename, code.co_firstlineno
        else:
            filename, line = inspect.getsourcefile(obj), inspect.getsourcelines(obj)[1]
    except Exception:
        return None, None
    if not filename:
        return None, None
    if not filename.startswith("<"):
        filename = os.path.abspath(filename)
    return filename, line


def first_doc_line(obj):
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return None
    lines = inspect.cleandoc(doc).strip().splitlines()
    return lines[0].strip() if lines else None


def schedule_json(schedule, until):
    if schedule is None:
        return None
    interval = getattr(schedule, "repeat_interval", None)
    every = None
    if interval:
        try:
            every = float(interval)
        except (TypeError, ValueError):
            every = repr(interval)
        else:
            if every - every != 0:  # inf or nan: not JSON
                every = repr(interval)
    return {
        "every_seconds": every,
        "cron": getattr(schedule, "cron_expression", None) or None,
        "count": getattr(schedule, "repeat_count", None),
        "until": until,
    }


def describe_task(reg):
    """({task entry}, None), or (None, {error entry}) when fastworker could
    not call the function as module:function."""
    func = reg.func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    filename, line = source_place(func)
    where = f"{filename}:{line}" if filename else "an unknown place"
    problem = None
    spec = None
    if not isinstance(module, str) or not isinstance(qualname, str):
        problem = f"{func!r} has no __module__ and __qualname__ to import it by"
    else:
        spec = f"{module}:{qualname}"
        if "<locals>" in qualname:
            problem = f"{spec} is defined inside a function"
        else:
            try:
                found = Target(spec).load()
            except (Exception, SystemExit) as exc:
                if isinstance(exc, TaskLoadError):
                    detail = str(exc)
                else:
                    detail = f"{type(exc).__name__}: {exc}"
                problem = f"{spec} cannot be imported ({detail})"
            else:
                if found is not func:
                    problem = (
                        f"{spec} is not the function @task registered "
                        "(is @task under another decorator?)"
                    )
    if problem is not None:
        error = (
            f"task '{reg.name}' at {where}: {problem}; a task must be a module-level "
            "function, which fastworker imports as module:function"
        )
        return None, {
            "module": module if isinstance(module, str) else None,
            "task": reg.name,
            "error": error,
            "traceback": None,
        }
    return {
        "name": reg.name,
        "target": spec,
        "module": module,
        "file": filename,
        "line": line,
        "doc": first_doc_line(func),
        "is_async": inspect.iscoroutinefunction(func),
        "schedule": schedule_json(reg.schedule, reg.until),
        "hooks": {"before": callable_name(reg.before), "after": callable_name(reg.after)},
    }, None


def duplicate_error(name, registrations):
    places = []
    for reg in registrations:
        filename, line = source_place(reg.func)
        places.append(
            f"{callable_name(reg.func)} at {filename}:{line}"
            if filename
            else callable_name(reg.func)
        )
    module = getattr(registrations[-1].func, "__module__", None)
    return {
        "module": module if isinstance(module, str) else None,
        "task": name,
        "error": (
            f"task name '{name}' is registered {len(registrations)} times: "
            + "; ".join(places)
            + ". FastWorker kept only the last one; give each task its own name, "
            "as in @task(\"other_name\")"
        ),
        "traceback": None,
    }


def discover(modules, proto_out):
    global RECORDER, IMPORTING
    kind = use_fastworker()
    RECORDER = []
    if kind == "fastworker":
        record_fastworker_registrations()
    errors = []
    failed = set()
    for index, name in enumerate(modules):
        IMPORTING = index
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            failed.add(index)
            errors.append(
                {
                    "module": name,
                    "task": None,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": error_object(exc)["traceback"],
                }
            )
    registrations, RECORDER, IMPORTING = RECORDER, None, None
    # Tasks of a module whose import failed cannot run: its error says why.
    registrations = [
        reg
        for reg in registrations
        if not (reg.during in failed and getattr(reg.func, "__module__", None) not in sys.modules)
    ]
    by_name = {}
    for reg in registrations:
        by_name.setdefault(reg.name, []).append(reg)
    tasks = []
    for reg in registrations:
        same = by_name[reg.name]
        if len(same) > 1:
            if reg is same[0]:
                errors.append(duplicate_error(reg.name, same))
            continue
        entry, error = describe_task(reg)
        if entry is not None:
            tasks.append(entry)
        else:
            errors.append(error)
    report = {
        "python": sys.version.split()[0],
        "registry": kind,
        "tasks": tasks,
        "errors": errors,
    }
    sys.stdout.flush()
    sys.stderr.flush()
    proto_out.write((json.dumps(report, default=repr) + "\n").encode("utf-8"))
    proto_out.flush()
    return 1 if failed else 0


def check(specs, proto_out):
    checks = []
    for spec in specs:
        try:
            Target(spec).load()
        except TaskLoadError as exc:
            checks.append({"function": spec, "ok": False, "error": str(exc)})
        except (Exception, SystemExit) as exc:
            error = f"cannot load {spec}: {type(exc).__name__}: {exc}"
            checks.append({"function": spec, "ok": False, "error": error})
        else:
            checks.append({"function": spec, "ok": True})
    sys.stdout.flush()
    sys.stderr.flush()
    proto_out.write((json.dumps({"checks": checks}) + "\n").encode("utf-8"))
    proto_out.flush()
    return 0 if all(c["ok"] for c in checks) else 1


class Target:
    """The task function, imported on first use so that an import error
    becomes a structured error for each request instead of a dead process."""

    def __init__(self, spec):
        self.spec = spec
        self.func = None
        self.loop = None
        # (TaskInfo, before, after) when the function is a task registered
        # with FastWorker's @task and has a hook; None for a plain function.
        self.hooks = None

    def load(self):
        if self.func is None:
            # Task modules may `from fastworker import task`: the real package
            # or the stand-in must be in place before the first one is imported.
            use_fastworker()
            module_name, _, attr = self.spec.partition(":")
            try:
                obj = importlib.import_module(module_name)
            except Exception as exc:
                raise TaskLoadError(
                    f"cannot import module '{module_name}' for {self.spec}: {exc}"
                ) from exc
            for part in attr.split("."):
                try:
                    obj = getattr(obj, part)
                except AttributeError:
                    raise TaskLoadError(
                        f"module '{module_name}' has no attribute '{attr}'"
                    ) from None
            if not callable(obj):
                raise TaskLoadError(f"{self.spec} is not callable")
            self.hooks = registered_hooks(obj)
            self.func = obj
        return self.func

    def call(self, request):
        func = self.load()
        args = request.get("args") or []
        kwargs = request.get("kwargs") or {}
        if not isinstance(args, list):
            raise TypeError("request 'args' must be a JSON array")
        if not isinstance(kwargs, dict):
            raise TypeError("request 'kwargs' must be a JSON object")
        if self.hooks is not None:
            return self.call_with_hooks(func, request, args, kwargs)
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def call_with_hooks(self, func, request, args, kwargs):
        """FastWorker 0.3.0's order: before(task), the function, after(task)
        only once the function has returned. A hook's exception fails the task."""
        info, before, after = self.hooks
        task = HookTask(request, args, kwargs, getattr(info, "name", None))
        if before is not None:
            self.settle(before(task))
        # As in FastWorker, the call takes its arguments from the task object,
        # so a before hook may change them.
        result = self.settle(func(*task.args, **task.kwargs))
        if after is not None:
            self.settle(after(task))
        return result

    def settle(self, value):
        """The value, or what it resolves to when it is awaitable (on the
        event loop this process keeps for async tasks)."""
        if inspect.isawaitable(value):
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            value = self.loop.run_until_complete(value)
        return value


# Frames of this file are left out of tracebacks (it runs as "<string>" under -c).
RUNNER_FILE = globals().get("__file__", "<string>")


def _without_runner_frames(te, depth=0):
    """Drops this runner's frames from a TracebackException and its chain."""
    te.stack = traceback.StackSummary.from_list(
        [frame for frame in te.stack if frame.filename != RUNNER_FILE]
    )
    if depth < 20:
        for chained in (te.__cause__, te.__context__):
            if chained is not None:
                _without_runner_frames(chained, depth + 1)
    return te


def error_object(exc):
    """A structured error whose traceback starts in the task's own code."""
    te = _without_runner_frames(traceback.TracebackException.from_exception(exc))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(te.format()),
    }


# One encoder for every reply: json.dumps with non-default options builds a
# new encoder per call. NaN and Infinity are not JSON, so they are refused.
ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def encode_result(result):
    """The JSON text of a result, or a clear error when it has none."""
    try:
        return ENCODER.encode(result)
    except (TypeError, ValueError) as exc:
        raise ResultNotSerializable(
            f"the task returned a value that is not JSON-serializable "
            f"({type(result).__name__}): {exc}"
        ) from None


class ResultNotSerializable(Exception):
    pass


# Per-request environment variables, and the request key each comes from.
REQUEST_VARS = (
    ("FASTWORKER_TASK_ID", "task_id"),
    ("FASTWORKER_TASK_NAME", "name"),
    ("FASTWORKER_ATTEMPT", "attempt"),
    ("TRACEPARENT", "traceparent"),
    ("TRACESTATE", "tracestate"),
)


# What request_environment last put in os.environ, by variable (a variable not
# here has not been set by it yet).
_request_env = {}


def request_environment(request):
    """Puts the request's task id, name and attempt number and its W3C trace
    context in os.environ (FASTWORKER_TASK_ID, FASTWORKER_TASK_NAME,
    FASTWORKER_ATTEMPT, TRACEPARENT, TRACESTATE) for the call, as a one-shot
    process has them from birth: a task reads its attempt, or opens child
    spans from the trace context (e.g. OpenTelemetry's env propagator). A
    variable the request does not give is removed. They stay until the next
    request: only what changed is written (os.environ writes cost
    microseconds, and a warm pool serves tens of thousands of calls a
    second)."""
    env = os.environ
    for name, key in REQUEST_VARS:
        value = request.get(key) if isinstance(request, dict) else None
        if type(value) is int:
            value = str(value) if value >= 1 else None
        elif not isinstance(value, str) or not value:
            value = None
        if name in _request_env and _request_env[name] == value:
            continue
        _request_env[name] = value
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


def run_one(target, request):
    """Calls the task; returns ("ok", json_text) or ("error", error_dict)."""
    request_environment(request)
    try:
        result = target.call(request)
    except TaskLoadError as exc:
        error = error_object(exc)
        if exc.__cause__ is not None:
            # The import's own error (e.g. a SyntaxError in the module) is what helps.
            error["traceback"] = error_object(exc.__cause__)["traceback"]
        return "error", error
    except BaseException as exc:  # noqa: B036 - SystemExit in a task is a task error
        return "error", error_object(exc)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        return "ok", encode_result(result)
    except ResultNotSerializable as exc:
        return "error", {"type": "ResultNotSerializable", "message": str(exc), "traceback": ""}


def oneshot(target, proto_in, proto_out):
    try:
        request = json.loads(proto_in.read() or b"null")
    except ValueError as exc:
        sys.stderr.write(f"fastworker_runner: invalid request on stdin: {exc}\n")
        return 2
    if not isinstance(request, dict):
        sys.stderr.write("fastworker_runner: the request on stdin must be a JSON object\n")
        return 2
    kind, value = run_one(target, request)
    if kind == "ok":
        proto_out.write(value.encode("utf-8"))
        proto_out.flush()
        return 0
    proto_out.write(json.dumps({"error": value}).encode("utf-8"))
    proto_out.flush()
    return 1


def pool(target, proto_in, proto_out):
    for line in proto_in:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            request_id = request.get("id")
        except (ValueError, AttributeError) as exc:
            sys.stderr.write(f"fastworker_runner: invalid request line: {exc}\n")
            return 2
        kind, value = run_one(target, request)
        if kind == "ok":
            # fastworker's ids are integers: format them directly (the hot path).
            if type(request_id) is int:
                reply = '{"id":%d,"ok":%s}\n' % (request_id, value)
            else:
                reply = '{"id":%s,"ok":%s}\n' % (ENCODER.encode(request_id), value)
        else:
            reply = json.dumps({"id": request_id, "error": value}) + "\n"
        proto_out.write(reply.encode("utf-8"))
        proto_out.flush()
    return 0


def main(argv):
    if sys.version_info < MIN_PYTHON:
        sys.stderr.write(
            "fastworker_runner: Python %d.%d or newer is needed, this is %s\n"
            % (MIN_PYTHON + (sys.version.split()[0],))
        )
        return 2
    options = parse_args(argv)
    root = os.path.abspath(options.root)
    # Modules are found relative to the manifest directory, ahead of anything else.
    sys.path[:] = [root] + [p for p in sys.path if p not in ("", root)]
    proto_in, proto_out = take_protocol_streams()
    if options.discover:
        return discover(options.modules, proto_out)
    if options.check:
        return check(options.function, proto_out)
    target = Target(options.function)
    if options.mode == "oneshot":
        return oneshot(target, proto_in, proto_out)
    return pool(target, proto_in, proto_out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
