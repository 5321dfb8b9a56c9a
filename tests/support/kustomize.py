"""Build a kustomization the way `kubectl apply -k` would, for tests without a cluster.

The command is the first of: `kustomize` on the PATH, `kubectl kustomize` (kubectl embeds
kustomize), or a `kustomize` built once with Go into the git-ignored `.cache/bin`
(`go install sigs.k8s.io/kustomize/kustomize/v5@KUSTOMIZE_VERSION`, from the Go module
proxy, under a minute). None of them working is an error, never a skip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
KUSTOMIZE_VERSION = "v5.5.0"
GO_FALLBACK = Path("/usr/local/go/bin/go")


class KustomizeError(RuntimeError):
    """No kustomize could be found or installed, or a build failed."""


def _works(command: list[str]) -> bool:
    try:
        done = subprocess.run(
            [*command, "--help"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _go_install() -> list[str]:
    """`kustomize` built with Go into .cache/bin (once); its module cache stays in .cache."""
    binary = CACHE / "bin" / "kustomize"
    if binary.is_file() and _works([str(binary)]):
        return [str(binary)]
    go = shutil.which("go") or (str(GO_FALLBACK) if GO_FALLBACK.is_file() else None)
    if go is None:
        raise KustomizeError(
            "no kustomize: neither `kustomize` nor `kubectl` is on the PATH, and Go (to run "
            f"`go install sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}`) is not "
            "installed either; install one of the three"
        )
    env = {
        **os.environ,
        "GOBIN": str(binary.parent),
        "GOPATH": str(CACHE / "go"),
        "GOMODCACHE": str(CACHE / "go" / "pkg" / "mod"),
        "GOCACHE": str(CACHE / "go" / "build"),
        "GOFLAGS": "-modcacherw",
    }
    module = f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"
    done = subprocess.run(
        [go, "install", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0 or not binary.is_file():
        raise KustomizeError(
            f"no kustomize on the PATH, and `go install {module}` failed "
            f"(exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return [str(binary)]


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """The command that builds a kustomization directory given as its last argument."""
    kustomize = shutil.which("kustomize")
    if kustomize is not None and _works([kustomize]):
        return (kustomize, "build")
    kubectl = shutil.which("kubectl")
    if kubectl is not None and _works([kubectl, "kustomize"]):
        return (kubectl, "kustomize")
    return (*_go_install(), "build")


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources `directory`'s kustomization produces, parsed."""
    command = [*kustomize_command(), str(directory)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise KustomizeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
