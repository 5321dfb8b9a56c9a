#!/bin/sh
# Starts the flow the way Bytewax's Helm chart and waxctl expect: the main container runs
# `sh -c "sh ./entrypoint.sh"` from the image's working directory (/bytewax), with
#   BYTEWAX_WORKDIR           the directory holding the deployed flow (e.g. /var/bytewax)
#   BYTEWAX_PYTHON_FILE_PATH  the flow to run (e.g. /var/bytewax/clickstream.py)
# Without them it runs the flow installed in the image, dataflows.clickstream. Arguments
# are passed on to bytewax.run; the BYTEWAX_* variables the chart sets (recovery, process
# id, addresses, workers) are read by bytewax.run itself.
set -eu

cd "${BYTEWAX_WORKDIR:-/bytewax}"
# exec: python replaces this shell, so SIGTERM from the kubelet reaches the flow.
exec python -m bytewax.run "${BYTEWAX_PYTHON_FILE_PATH:-dataflows.clickstream}" "$@"
