"""Autoscaling a flow on its own metrics: the model (`model`), what it reads (`metrics`),
what it acts through (`local`), and the loop (`run`)."""
