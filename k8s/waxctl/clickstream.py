"""The file waxctl ships (k8s/waxctl/deploy.sh): the chart runs it with `python -m bytewax.run`."""

from dataflows.clickstream import flow

__all__ = ["flow"]
