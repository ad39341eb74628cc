#!/usr/bin/env python3
"""Fails on its first attempts and succeeds on a later one: a retry demo.

Reads the attempt number from the request; succeeds from attempt
`kwargs.succeed_on` (default 3). A failing attempt exits 1 with a structured
error on stdout, which fastworker shows with the exit code.
"""

import json
import sys

request = json.load(sys.stdin)
succeed_on = int(request.get("kwargs", {}).get("succeed_on", 3))
attempt = request["attempt"]
if attempt < succeed_on:
    print(f"attempt {attempt}: not yet", file=sys.stderr)
    json.dump({"error": {"type": "NotYet", "message": f"attempt {attempt} < {succeed_on}"}}, sys.stdout)
    sys.exit(1)
json.dump({"succeeded_on_attempt": attempt}, sys.stdout)
