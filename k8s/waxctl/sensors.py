"""The file waxctl ships for WAXHOUSE_FLOW=sensors (k8s/waxctl/deploy.sh): the chart runs it
with `python -m bytewax.run`."""

from dataflows.sensors import flow

__all__ = ["flow"]
