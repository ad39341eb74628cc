#!/usr/bin/env python3
"""A one-shot task as a plain script: no runner, no imports from fastworker.

It reads one JSON request on stdin ({"task_id", "name", "args", "kwargs",
"attempt"}), writes one JSON value on stdout, and exits 0.
"""

import json
import sys

request = json.load(sys.stdin)
x, y = request["args"]
json.dump(x + y, sys.stdout)
