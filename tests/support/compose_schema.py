"""The Compose Specification's JSON schema, offline after the first download.

The schema ships in the Go module ``github.com/compose-spec/compose-go/v2`` (the library
Docker Compose loads compose files with) as ``schema/compose-spec.json``. The Go module
proxy serves that module, so ``go mod download`` fetches it once into ``.cache/go/`` at the
repository root (git-ignored, deletable: the cache is written with ``-modcacherw``); later
runs read the cached copy and need neither Go nor the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MODULE = "github.com/compose-spec/compose-go/v2"
VERSION = "v2.16.2"
GO_CACHE = REPO / ".cache" / "go"
SCHEMA_IN_MODULE = Path("schema") / "compose-spec.json"
_GO_FALLBACK = Path("/usr/local/go/bin/go")


class ComposeSchemaUnavailable(RuntimeError):
    """The schema is not cached and could not be downloaded."""


def _go() -> str:
    found = shutil.which("go")
    if found:
        return found
    if _GO_FALLBACK.is_file():
        return str(_GO_FALLBACK)
    raise ComposeSchemaUnavailable(
        f"the Compose schema is not cached in {GO_CACHE} and Go is not installed to fetch it "
        f"(`go mod download {MODULE}@{VERSION}`): install Go (https://go.dev/dl/) or put "
        "/usr/local/go/bin on the PATH"
    )


def _go_env() -> dict[str, str]:
    return {
        **os.environ,
        "GOPATH": str(GO_CACHE),
        "GOMODCACHE": str(GO_CACHE / "mod"),
        "GOCACHE": str(GO_CACHE / "build"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "local",
        "GO111MODULE": "on",
    }


def _module_dir() -> Path:
    """The module's directory in the cache, downloading it if missing."""
    cached = GO_CACHE / "mod" / f"{MODULE}@{VERSION}"
    if (cached / SCHEMA_IN_MODULE).is_file():
        return cached
    go = _go()
    # Outside any Go module, so no go.mod of ours is read or changed.
    with tempfile.TemporaryDirectory() as outside:
        done = subprocess.run(
            [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
            cwd=outside,
            env=_go_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if done.returncode != 0:
        raise ComposeSchemaUnavailable(
            f"`go mod download {MODULE}@{VERSION}` failed (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-2000:]}"
        )
    return Path(json.loads(done.stdout)["Dir"])


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema (draft 2020-12), as a dict."""
    path = _module_dir() / SCHEMA_IN_MODULE
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema
