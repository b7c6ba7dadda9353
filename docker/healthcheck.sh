#!/bin/bash
# Container HEALTHCHECK: GET /healthz on pgtenant's metrics listener and succeed on a 200.
# Uses bash's /dev/tcp because the runtime image has no curl or wget. Needs metrics_listen on
# 127.0.0.1 or 0.0.0.0; PGTENANT_HEALTH_PORT overrides the port (default 9930).
set -u
port="${PGTENANT_HEALTH_PORT:-9930}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 5 _version status _reason <&3 || exit 1
[ "$status" = "200" ]
