#!/bin/bash
# quill-healthcheck [PATH] — the image's HEALTHCHECK: exits 0 when quill serve answers PATH
# (default /health) with 200 on QUILL_HOST:QUILL_PORT, else 1 with one line on stderr.
# bash's /dev/tcp, so the image needs no curl. /health and /ready need no API key.
set -u
path=${1:-/health}
host=${QUILL_HOST:-127.0.0.1}
case $host in 0.0.0.0 | "") host=127.0.0.1 ;; "::" | "[::]") host=::1 ;; esac
host=${host#[}
host=${host%]}
port=${QUILL_PORT:-8000}
if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "quill-healthcheck: nothing listens on $host:$port" >&2
    exit 1
fi
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
status=""
IFS= read -r -t 5 status <&3
exec 3<&-
case $status in
"HTTP/1.1 200 "*) exit 0 ;;
esac
status=${status%$'\r'}
echo "quill-healthcheck: GET $path on $host:$port: ${status:-no answer}" >&2
exit 1
