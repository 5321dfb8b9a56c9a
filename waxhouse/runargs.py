"""How `python -m bytewax.run` was started, for code that runs inside it."""

from __future__ import annotations

import sys


def bytewax_run_args() -> dict[str, object] | None:
    """The arguments `python -m bytewax.run` was started with, or None if it was not.

    Parsed by Bytewax's own (pinned 0.21.1) parser, so flags and `BYTEWAX_*` variables
    mean exactly what they mean to Bytewax.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return None
    from bytewax.run import _parse_args

    return vars(_parse_args())


def is_cluster(args: dict[str, object] | None) -> bool:
    """Whether this process is one of several workers (`-w` > 1 or `-i/-a`)."""
    if args is None:
        return False
    workers = args.get("workers_per_process") or 1
    return args.get("process_id") is not None or int(str(workers)) > 1
