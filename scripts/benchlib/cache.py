"""``bench cache``: the node cache's compression, unpack and cold start.

Artifacts (single files): one generated per ``--sizes`` (default 1 MiB,
100 MiB, 1 GiB), made of alternating 1 MiB blocks whose first half is random
bytes (incompressible, like float weights) and whose second half is float text
("-1.23456789e-01, ...") cut at a random place from a 3.3 MB pool (compressible
~6x, like configs, vocabularies and text formats); seeded, so every run makes
the same bytes. Plus one real model file, made in a subprocess: a pickled
scikit-learn ``RandomForestClassifier`` (50 trees on 20,000 samples, saved with
joblib, ~10 MiB) when scikit-learn is importable, otherwise a pickled dict of
numpy float32 arrays (a two-layer perceptron's weights, ~8 MiB; say which in
the output). ``--no-model`` skips it.

Figures per artifact (MB = 10^6 bytes; every time is the best of
``--repeat``; ``os.sync()`` runs before each timed step so that no earlier
step's dirty pages are written back during it):

- ``ratio``: uncompressed / compressed bytes of the blob.
- ``compress_mb_s``: uncompressed bytes / seconds of ``NodeCache.put`` into an
  empty cache (scan, SHA-256, zstd level 3 with one worker per CPU for 8 MiB and
  more, fsync of the blob, rename, index row): the cache's own settings.
- ``decompress_mb_s``: zstd decompression of the blob alone, one thread (so per
  core), into a reused buffer and counted (nothing written).
- ``unpack_vs_copy``: seconds of ``shutil.copyfile`` of the uncompressed
  artifact to a new file on the same disk / seconds of ``NodeCache.unpack`` to a
  fresh directory (decompress, SHA-256, write, marker, rename); above 1 the
  unpack is faster. Neither is fsynced (unpack does not fsync). Both sources are
  read once first, so both come from the page cache, and both outputs land in
  it; each output is deleted before the next step. (On a VM, memory the guest
  has not touched yet can cost ~10x more to fill than freed page cache: deleting
  at once lets the next step reuse the same pages.) ``unpack_vs_copy_fsync`` is
  the same with both outputs fsynced before the clock stops, i.e. on the disk.
- ``cold_from_cache_vs_storage``: seconds of a cold start from the cache /
  seconds of one from storage. From storage: ``pull_into`` of
  ``http://127.0.0.1:PORT/NAME`` (an aiohttp static file server in a
  subprocess, on loopback) into an empty staging dir, ``NodeCache.put`` into an
  empty cache, ``NodeCache.unpack`` to a fresh dir. From cache: only
  ``NodeCache.unpack`` to a fresh dir, the blob already cached (the storage
  run's staged and unpacked copies are deleted first, as above). Below 1 the
  cache is faster. The top-level ``cold_from_cache_vs_storage`` is the one of
  the largest artifact.

Targets checked: decompression at no less than 1,000 MB/s per core, and
``unpack_vs_copy`` at no less than 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard as zstd

from agent.cache import NodeCache
from agent.storage.pull import pull_into

from .report import environment, print_environment, progress, say

MB = 1_000_000
BLOCK = 1 << 20  # generated artifacts alternate random and text halves of this
DECOMPRESS_TARGET_MB_S = 1000.0
UNPACK_VS_COPY_TARGET = 0.9
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}

_SERVER = """
import asyncio, sys
from aiohttp import web

async def main():
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

_SKLEARN_MODEL = """
import sys
import joblib
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

X, y = make_classification(n_samples=20000, n_features=20, n_informative=10, random_state=0)
model = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1).fit(X, y)
joblib.dump(model, sys.argv[1])
"""

_NUMPY_MODEL = """
import pickle, sys
import numpy as np

rng = np.random.default_rng(0)
model = {
    "kind": "mlp",
    "w1": (rng.standard_normal((512, 4096)) * 0.02).astype(np.float32),
    "b1": np.zeros(4096, np.float32),
    "w2": (rng.standard_normal((4096, 10)) * 0.02).astype(np.float32),
    "b2": np.zeros(10, np.float32),
}
with open(sys.argv[1], "wb") as f:
    pickle.dump(model, f, protocol=5)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1MiB,100MiB,1GiB",
                   help="generated artifact sizes, comma-separated (KiB/MiB/GiB, KB/MB/GB "
                        "or bytes; default %(default)s)")
    p.add_argument("--dir", help="parent of the work dir (artifacts, caches, copies); copy "
                                 "and unpack are measured on its disk (default: $TMPDIR)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per step; the best counts")
    p.add_argument("--no-model", action="store_true", help="skip the real model file")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64KiB, 100MiB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


# --- artifacts ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    label: str
    path: Path
    kind: str  # "generated" or "model"


def generate(path: Path, size: int, seed: int = 0) -> None:
    """Write ``size`` bytes: per ``BLOCK``, half random bytes, half float text."""
    rng = random.Random(seed)
    pool = "".join(f"{rng.gauss(0.0, 1.0):.8e}, " for _ in range(200_000)).encode()
    half = max(1, min(BLOCK, size) // 2)
    left = size
    with open(path, "wb") as f:
        while left > 0:
            at = rng.randrange(len(pool) - half)
            block = rng.randbytes(half) + pool[at : at + half]
            f.write(block[:left])
            left -= len(block)


def make_model(dest_dir: Path) -> Artifact | None:
    """A real model file, made in a subprocess (none of its imports here)."""
    if importlib.util.find_spec("sklearn") is not None:
        path, script = dest_dir / "model.joblib", _SKLEARN_MODEL
        label = "sklearn RandomForest (joblib)"
    elif importlib.util.find_spec("numpy") is not None:
        path, script = dest_dir / "mlp-weights.pkl", _NUMPY_MODEL
        label = "numpy MLP weights (pickle; no scikit-learn)"
    else:
        progress("no scikit-learn and no numpy: no real model file")
        return None
    progress(f"making the real model file: {label} ...")
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    return Artifact(label, path, "model")


# --- measuring ---------------------------------------------------------------


def _timed(fn: Callable[[], object]) -> float:
    os.sync()  # nothing left over from the previous step is written back during this one
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _warm(path: Path) -> None:
    """Read the file once, so the timed steps read it from the page cache."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def _decompress(blob: Path) -> int:
    buf = bytearray(BLOCK)
    n = 0
    with open(blob, "rb") as f, zstd.ZstdDecompressor().stream_reader(f, read_size=BLOCK) as zr:
        while got := zr.readinto(buf):
            n += got
    return n


class StaticServer:
    """An aiohttp static file server for ``root`` in a subprocess, on loopback."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(root)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the port, once it listens; "" if it died
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the static file server did not start (said {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def measure(art: Artifact, work: Path, server_url: str, repeat: int) -> dict[str, Any]:
    """Every figure for one artifact; ``work`` is an empty scratch directory."""
    src = art.path
    size = src.stat().st_size
    quota = 4 * size + (64 << 20)
    key = f"bench/{src.name}"
    _warm(src)

    progress(f"{art.label}: put ...")
    put_s: list[float] = []
    for r in range(repeat):
        root = work / f"put-{r}"
        cache = NodeCache(root, quota, owner="bench")
        put_s.append(_timed(lambda c=cache: c.put(key, src)))
        info = cache.get(key)
        assert info is not None
        if r < repeat - 1:
            cache.close()
            _remove(root)
    blob = cache.blob_path(info.digest)
    _warm(blob)

    progress(f"{art.label}: decompress ...")
    dec_s = [_timed(lambda: _decompress(blob)) for _ in range(repeat)]

    progress(f"{art.label}: copy vs unpack ...")
    copy_s, unpack_s, copy_fsync_s, unpack_fsync_s = [], [], [], []
    for r in range(repeat):
        dest = work / f"copy-{r}"
        copy_s.append(_timed(lambda d=dest: shutil.copyfile(src, d)))
        _remove(dest)
        dest = work / f"unpack-{r}"
        unpack_s.append(_timed(lambda d=dest: cache.unpack(key, d)))
        _remove(dest)
        dest = work / f"copy-fsync-{r}"
        copy_fsync_s.append(_timed(lambda d=dest: _fsync(shutil.copyfile(src, d))))
        _remove(dest)
        dest = work / f"unpack-fsync-{r}"
        unpack_fsync_s.append(_timed(lambda d=dest: _fsync(cache.unpack(key, d))))
        _remove(dest)

    progress(f"{art.label}: cold start from storage vs from cache ...")
    storage_s, cached_s = [], []
    url = f"{server_url}/{src.name}"
    for r in range(repeat):
        root, staging = work / f"cold-cache-{r}", work / f"cold-staging-{r}"
        cold = NodeCache(root, quota, owner="bench")

        def from_storage(c: NodeCache = cold, staging: Path = staging, r: int = r) -> None:
            pulled = asyncio.run(pull_into(url, staging, 2 * size + (1 << 20)))
            c.put(key, pulled.path)
            c.unpack(key, work / f"cold-storage-dest-{r}")

        storage_s.append(_timed(from_storage))
        # Both start alike: the storage run's copies go first (see above).
        _remove(staging)
        _remove(work / f"cold-storage-dest-{r}")
        cached_s.append(_timed(lambda c=cold, r=r: c.unpack(key, work / f"cold-cache-dest-{r}")))
        cold.close()
        _remove(root)
        _remove(work / f"cold-cache-dest-{r}")
    cache.close()

    best = min  # of the repeats
    return {
        "name": src.name,
        "label": art.label,
        "kind": art.kind,
        "size_bytes": size,
        "compressed_bytes": info.compressed_bytes,
        "ratio": size / info.compressed_bytes,
        "put_s": best(put_s),
        "compress_mb_s": size / best(put_s) / MB,
        "decompress_s": best(dec_s),
        "decompress_mb_s": size / best(dec_s) / MB,
        "copy_s": best(copy_s),
        "unpack_s": best(unpack_s),
        "unpack_mb_s": size / best(unpack_s) / MB,
        "unpack_vs_copy": best(copy_s) / best(unpack_s),
        "copy_fsync_s": best(copy_fsync_s),
        "unpack_fsync_s": best(unpack_fsync_s),
        "unpack_vs_copy_fsync": best(copy_fsync_s) / best(unpack_fsync_s),
        "cold_from_storage_s": best(storage_s),
        "cold_from_cache_s": best(cached_s),
        "cold_from_cache_vs_storage": best(cached_s) / best(storage_s),
    }


# --- the benchmark -----------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment()
    print_environment(env)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    repeat = max(1, args.repeat)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-cache-", dir=args.dir))
    say(f"cache: artifacts {', '.join(human(s) for s in sizes)}"
        f"{'' if args.no_model else ' and a real model file'}; best of {repeat}; in {work}")
    server = None
    try:
        src_dir = work / "src"
        src_dir.mkdir()
        artifacts = []
        for i, size in enumerate(sizes):
            path = src_dir / f"generated-{i}-{size}.bin"
            progress(f"generating {human(size)} ...")
            generate(path, size, seed=i)
            artifacts.append(Artifact(f"generated {human(size)}", path, "generated"))
        if not args.no_model and (model := make_model(src_dir)) is not None:
            artifacts.append(model)
        server = StaticServer(src_dir)
        rows = []
        for art in artifacts:
            scratch = work / "scratch"
            scratch.mkdir()
            rows.append(measure(art, scratch, server.url, repeat))
            _remove(scratch)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    largest = max(rows, key=lambda row: row["size_bytes"])
    min_decompress = min(row["decompress_mb_s"] for row in rows)
    min_unpack = min(row["unpack_vs_copy"] for row in rows)
    result: dict[str, Any] = {
        "benchmark": "cache",
        "artifacts": rows,
        "cold_from_cache_vs_storage": largest["cold_from_cache_vs_storage"],
        "cold_from_cache_vs_storage_basis": (
            f"cache / storage cold-start seconds of the largest artifact, {largest['label']}"
        ),
        "targets": {
            "decompress_mb_s_per_core": DECOMPRESS_TARGET_MB_S,
            "decompress_met": min_decompress >= DECOMPRESS_TARGET_MB_S,
            "unpack_vs_copy": UNPACK_VS_COPY_TARGET,
            "unpack_vs_copy_met": min_unpack >= UNPACK_VS_COPY_TARGET,
        },
        "repeat": repeat,
        "generated_content": "per 1 MiB block: half random bytes, half float text "
                             "(seeded); single files",
        **env,
    }
    _print(result)
    return result


def _print(r: dict[str, Any]) -> None:
    rows = r["artifacts"]
    width = max(len("artifact"), *(len(row["label"]) for row in rows))
    say()
    say(f"{'artifact':<{width}}  {'size':>9}  {'blob':>9}  {'ratio':>5}  "
        f"{'compress':>10}  {'decompress':>10}")
    for row in rows:
        say(f"{row['label']:<{width}}  {human(row['size_bytes']):>9}  "
            f"{human(row['compressed_bytes']):>9}  {row['ratio']:>5.2f}  "
            f"{row['compress_mb_s']:>5,.0f} MB/s  {row['decompress_mb_s']:>5,.0f} MB/s")
    say()
    say(f"{'artifact':<{width}}  {'copy':>9}  {'unpack':>9}  {'unpack vs copy':>14}  "
        f"{'copy+fsync':>10}  {'unpack+fsync':>12}  {'vs copy':>7}")
    for row in rows:
        say(f"{row['label']:<{width}}  {row['copy_s'] * 1e3:>6,.1f} ms  "
            f"{row['unpack_s'] * 1e3:>6,.1f} ms  {row['unpack_vs_copy']:>13.2f}x  "
            f"{row['copy_fsync_s'] * 1e3:>7,.1f} ms  {row['unpack_fsync_s'] * 1e3:>9,.1f} ms  "
            f"{row['unpack_vs_copy_fsync']:>6.2f}x")
    say()
    say(f"{'artifact':<{width}}  {'cold from storage':>17}  {'from cache':>10}  "
        f"{'cache/storage':>13}")
    for row in rows:
        say(f"{row['label']:<{width}}  {row['cold_from_storage_s'] * 1e3:>14,.1f} ms  "
            f"{row['cold_from_cache_s'] * 1e3:>7,.1f} ms  "
            f"{row['cold_from_cache_vs_storage']:>12.2f}x")
    say()
    t = r["targets"]
    dec = min(row["decompress_mb_s"] for row in rows)
    unp = min(row["unpack_vs_copy"] for row in rows)
    say(f"target decompress >= {t['decompress_mb_s_per_core']:,.0f} MB/s per core: "
        f"{'met' if t['decompress_met'] else 'NOT met'} (lowest {dec:,.0f} MB/s)")
    say(f"target unpack >= {t['unpack_vs_copy']:.1f}x plain copy: "
        f"{'met' if t['unpack_vs_copy_met'] else 'NOT met'} (lowest {unp:.2f}x)")
    say(f"cold start from cache / from storage, largest artifact: "
        f"{r['cold_from_cache_vs_storage']:.2f}x")
