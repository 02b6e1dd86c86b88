#!/usr/bin/env bash
# MONAI Label server for this bundle, in the foreground on 127.0.0.1:PORT.
#
#   scripts/label_server.sh STUDIES_DIR PORT [--conf KEY VALUE ...]
#
# Builds the server's own venv once (scripts/label_venv.sh, cached), then runs
# `monailabel start_server` with the app apps/monailabel over STUDIES_DIR, serving the bundle's
# current weights (models/model.pt, else a copy of the shipped models/pretrained.pt, unless --conf
# model_path says otherwise; apps/monailabel/main.py lists every conf key). Ctrl-C or SIGTERM
# stops the server and any training it started.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 STUDIES_DIR PORT [--conf KEY VALUE ...]" >&2
    exit 2
fi
STUDIES="$1"
PORT="$2"
shift 2
if [[ ! "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    echo "label_server: PORT must be a number in 1..65535, got '$PORT'" >&2
    exit 2
fi
if [[ ! -d "$STUDIES" ]]; then
    echo "label_server: studies folder not found: $STUDIES" >&2
    exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$("$REPO/scripts/label_venv.sh" | tail -n 1)"

# The bundle's code comes from this checkout, whichever checkout built the venv.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MONAILABEL_PYEXE="$VENV/bin/python"
# The local datastore lists only these files; the bundle reads each of these formats.
export MONAI_LABEL_DATASTORE_FILE_EXT="${MONAI_LABEL_DATASTORE_FILE_EXT:-[\"*.png\",\"*.jpg\",\"*.jpeg\",\"*.bmp\",\"*.dcm\",\"*.nii.gz\",\"*.nii\"]}"

# Job control puts the server in its own process group, so one signal reaches it and the training
# subprocesses it starts, and a Ctrl-C in the terminal reaches only this script first.
set -m
"$VENV/bin/monailabel" start_server --app "$REPO/apps/monailabel" --studies "$STUDIES" \
    --host 127.0.0.1 --port "$PORT" "$@" &
server=$!

stopping=0
stop() {
    echo "label_server: stopping (pid $server)" >&2
    stopping=1
    kill -TERM -- "-$server" 2>/dev/null || true
}
trap stop INT TERM

status=0
# `wait` returns early when a trapped signal arrives; keep waiting until the server has exited.
while kill -0 "$server" 2>/dev/null; do
    wait "$server" || status=$?
done
# uvicorn ends on the SIGTERM we sent once it has shut down: a requested stop is a clean exit.
if ((stopping && status == 128 + 15)); then
    status=0
fi
exit "$status"
