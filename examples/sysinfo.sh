#!/bin/sh
# A non-Python task: reads the JSON request on stdin and answers with where it
# ran and the request it was given (embedded as it came, since it is JSON).
request=$(cat)
printf '{"host":"%s","pid":%d,"shell":"%s","request":%s}\n' \
    "$(uname -n)" "$$" "${0##*/}" "$request"
