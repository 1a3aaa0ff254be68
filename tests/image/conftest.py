"""The image under test: built once from this tree by ``scripts/build-image``,
or reused when an image built from the same files is already there.

The image is tagged ``localhost/meshlet:test-<key>``, the key a digest of the
base image and every file of the build context (``tests/image/context.py``),
so a second run in a session, or any later run on an unchanged tree, starts
at once; a changed tree builds again (its dependency layer still cached when
pyproject.toml is unchanged) and drops the older test images.

No registry is needed: when the base image is not there it is made with
``scripts/make-base-image`` (debootstrap; root). A missing tool fails the
tests, with how to install it; they are never skipped.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.image.context import ROOT, context_key
from tests.image.podman import Podman, missing_message, missing_tools

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # what `FROM debian:bookworm-slim` names
REPOSITORY = "localhost/meshlet"
BASE_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_s: float | None  # None: reused, built by an earlier run
    size_bytes: int


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    missing = missing_tools()
    if missing:
        pytest.fail(missing_message(missing), pytrace=False)
    return Podman(tmp_path_factory.mktemp("podman"))


def _script(*args: str, timeout_s: float) -> float:
    """Run one of scripts/, failing with the end of its output; returns seconds."""
    start = time.monotonic()
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / args[0]), *args[1:]],
            capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"scripts/{args[0]} ran over {timeout_s} s:\n{err.stderr!r:.6000}",
                    pytrace=False)
    assert result.returncode == 0, (
        f"scripts/{' '.join(args)} exited {result.returncode}:\n"
        f"{(result.stdout + result.stderr)[-6000:]}"
    )
    return time.monotonic() - start


@pytest.fixture(scope="session")
def built_image(podman: Podman) -> BuiltImage:
    if not podman.exists(BASE_IMAGE):
        if os.geteuid() != 0:
            pytest.fail(f"no base image {BASE_IMAGE}: make it as root with "
                        "`sudo scripts/make-base-image` (or pull it)", pytrace=False)
        _script("make-base-image", "--engine", "podman", "--tag", BASE_IMAGE,
                timeout_s=BASE_TIMEOUT_S)
    key = context_key(podman.inspect("image", BASE_IMAGE)["Id"])
    tag = f"{REPOSITORY}:test-{key[:16]}"
    build_s = None
    if not podman.exists(tag):
        build_s = _script("build-image", "--engine", "podman", "--tag", tag,
                          timeout_s=BUILD_TIMEOUT_S)
        _drop_older_test_images(podman, keep=tag)
    size = int(podman.inspect("image", tag)["Size"])
    return BuiltImage(tag, build_s, size)


def _drop_older_test_images(podman: Podman, keep: str) -> None:
    """Untag the test images of earlier trees (layers they share stay)."""
    listed = podman.out("images", "--format", "{{.Repository}}:{{.Tag}}",
                        "--filter", f"reference={REPOSITORY}:test-*")
    for name in listed.split():
        if name != keep:
            podman.run("rmi", name, check=False)  # one in use by a container stays


@pytest.fixture
def volumes(podman: Podman) -> Iterator[tuple[str, str]]:
    """A fresh data volume and cache volume, removed afterwards."""
    suffix = os.urandom(4).hex()
    names = (f"meshlet-test-data-{suffix}", f"meshlet-test-cache-{suffix}")
    for name in names:
        podman.run("volume", "create", name)
    yield names
    for name in names:
        podman.run("volume", "rm", "--force", name, check=False)

