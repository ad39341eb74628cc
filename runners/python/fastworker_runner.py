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
"""

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
import traceback

MIN_PYTHON = (3, 9)


class TaskLoadError(Exception):
    """The configured function could not be imported."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="fastworker_runner")
    parser.add_argument("--mode", choices=("oneshot", "pool"), required=True)
    parser.add_argument("--function", required=True, help="module:function")
    parser.add_argument("--root", default=".", help="directory modules are found in")
    return parser.parse_args(argv)


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


class Target:
    """The task function, imported on first use so that an import error
    becomes a structured error for each request instead of a dead process."""

    def __init__(self, spec):
        self.spec = spec
        self.func = None
        self.loop = None

    def load(self):
        if self.func is None:
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
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result


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


def run_one(target, request):
    """Calls the task; returns ("ok", json_text) or ("error", error_dict)."""
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
    target = Target(options.function)
    if options.mode == "oneshot":
        return oneshot(target, proto_in, proto_out)
    return pool(target, proto_in, proto_out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
