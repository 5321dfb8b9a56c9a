#!/bin/sh
# The recovery init step of Bytewax's Helm chart and waxctl: its init container runs
# `sh -c "sh ./entrypoint-recovery.sh"` from the image's working directory before the flow
# starts, with BYTEWAX_RECOVERY_DIRECTORY set when recovery is on.
#
# All this needs to do is make sure the directory exists. It creates no partitions on
# purpose: the flow initialises recovery itself when it starts (waxhouse/recovery.py).
# Each process creates its own partition if it is missing (index = its process id, count =
# the number of processes) and never touches one that exists, so a pod with a volume of its
# own needs no init step, and a restarted pod resumes from the state it left.
set -eu

if [ -z "${BYTEWAX_RECOVERY_DIRECTORY:-}" ]; then
    echo "entrypoint-recovery: BYTEWAX_RECOVERY_DIRECTORY is not set: recovery is off, nothing to prepare" >&2
    exit 0
fi

mkdir -p "$BYTEWAX_RECOVERY_DIRECTORY"
echo "entrypoint-recovery: $BYTEWAX_RECOVERY_DIRECTORY is ready; the flow initialises its partition at start" >&2
