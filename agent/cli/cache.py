"""``meshlet cache ls|stats|prune``: the node model cache, read on disk.

These commands open the cache directory directly (not through an agent), so
they work whether an agent runs or not; the cache's own file locks make that
safe next to running agents. The directory is ``--cache-dir``, else
``$MESHLET_CACHE_DIR``, else ``<data dir>/cache`` (``$MESHLET_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from agent.cache.errors import CacheFull
from agent.cache.node import NodeCache
from agent.cli.args import SIZE_HELP, add_command, add_group, size_type
from agent.cli.errors import CliError, UsageError
from agent.cli.render import human_bytes, plural
from agent.config import Settings


def add_parser(subparsers: Any) -> None:
    commands = add_group(
        subparsers, "cache", "inspect and prune the node model cache",
        "Inspect and prune the node's model cache: one zstd blob per distinct\n"
        "artifact, named by the SHA-256 of its content, under a byte quota.\n"
        "Reads the cache directory on disk, so it works with or without a running\n"
        "agent.",
        "  meshlet cache stats\n"
        "  meshlet cache ls\n"
        "  meshlet cache prune --max-bytes 10Gi",
    )
    ls = add_command(
        commands, "ls", "list cached artifacts",
        "One line per cache key (a model URI): digest, uncompressed and compressed\n"
        "size, pins (loaded models using it, over all agents) and last use.\n"
        "Blobs no key names are listed with key '-'.",
        "  meshlet cache ls\n"
        "  meshlet cache ls --cache-dir /var/lib/meshlet/cache",
    )
    _add_dir(ls)
    ls.set_defaults(run=list_cache)

    stats = add_command(
        commands, "stats", "show the cache's totals",
        "Quota (this agent's setting), bytes used, blobs, keys, pinned blobs, and\n"
        "how many blobs were found corrupt or evicted since the cache was made.",
        "  meshlet cache stats",
    )
    _add_dir(stats)
    stats.set_defaults(run=show_stats)

    prune = add_command(
        commands, "prune", "remove dead and unneeded cache files",
        "Remove temp files of dead writers, blob files with no index row, rows\n"
        "with no file, and blobs no key names. With --max-bytes, also evict\n"
        "least-recently-used blobs that no loaded model pins until the cache\n"
        "holds at most that many compressed bytes (0 empties it of unpinned blobs).",
        "  meshlet cache prune\n"
        "  meshlet cache prune --max-bytes 0",
    )
    prune.add_argument("--max-bytes", type=size_type, metavar="SIZE",
                       help=f"evict unpinned blobs down to this size: {SIZE_HELP} "
                            "(default: no eviction)")
    _add_dir(prune)
    prune.set_defaults(run=prune_cache)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="the cache directory (default: $MESHLET_CACHE_DIR, else "
                             "<data dir>/cache)")


def _open(args: argparse.Namespace) -> NodeCache:
    overrides: dict[str, Any] = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    try:
        settings = Settings(**overrides)  # MESHLET_* from the environment, as the agent
    except ValueError as err:
        raise UsageError(f"invalid setting: {err}") from None
    root = settings.resolved_cache_dir
    if not (root / "index.sqlite3").exists():
        raise CliError(f"no node cache at {root} (set --cache-dir or MESHLET_CACHE_DIR)")
    # The quota only matters for eviction; prune passes its own target.
    return NodeCache(root, settings.cache_quota_bytes or 1 << 62, owner="meshlet-cli")


def list_cache(args: argparse.Namespace) -> int:
    cache = _open(args)
    try:
        rows = cache.ls()
    finally:
        cache.close()
    out = sys.stdout
    out.write(f"{'DIGEST':<14} {'SIZE':>12} {'COMPRESSED':>12} {'PINS':>4}  "
              f"{'LAST USE':<19}  KEY\n")
    for info in rows:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.last_used_ns / 1e9))
        out.write(f"{info.digest[:12]:<14} {human_bytes(info.size_bytes):>12} "
                  f"{human_bytes(info.compressed_bytes):>12} {info.pins:>4}  {used:<19}  "
                  f"{info.key or '-'}\n")
    out.write(plural(len(rows), "entry", "entries") + "\n")
    return 0


def show_stats(args: argparse.Namespace) -> int:
    cache = _open(args)
    try:
        st = cache.stats()
    finally:
        cache.close()
    ratio = st.size_bytes / st.used_bytes if st.used_bytes else 0.0
    quota = human_bytes(st.quota_bytes) if st.quota_bytes < 1 << 62 else "(the agent's setting)"
    print(f"directory:  {cache.root}")
    print(f"quota:      {quota}")
    print(f"used:       {human_bytes(st.used_bytes)} compressed, {human_bytes(st.size_bytes)} "
          f"uncompressed (ratio {ratio:.2f})")
    print(f"blobs:      {st.blobs} ({st.pinned_blobs} pinned by loaded models)")
    print(f"keys:       {st.keys}")
    print(f"corrupt:    {st.corrupt_total} found and removed")
    print(f"evicted:    {st.evicted_total}")
    return 0


def prune_cache(args: argparse.Namespace) -> int:
    cache = _open(args)
    evicted, still_pinned = 0, False
    try:
        result = cache.prune()
        if args.max_bytes is not None:
            before = cache.stats().blobs
            cache.quota_bytes = args.max_bytes
            try:
                cache.evict_to_fit(0)
            except CacheFull:
                still_pinned = True  # every unpinned blob is gone; the rest is in use
            evicted = before - cache.stats().blobs
        used = cache.stats().used_bytes
    finally:
        cache.close()
    print(f"removed {plural(result.temps, 'dead temp file')}, "
          f"{plural(result.orphan_files, 'orphan blob file')}, "
          f"{plural(result.missing_rows, 'row')} of missing blobs, "
          f"{plural(result.unreferenced, 'unreferenced blob')} "
          f"({human_bytes(result.freed_bytes)} freed)")
    if args.max_bytes is not None:
        print(f"evicted {plural(evicted, 'least-recently-used blob')}; "
              f"{human_bytes(used)} in use")
        if still_pinned:
            print(f"{human_bytes(used)} stay: pinned by models loaded now", file=sys.stderr)
    return 0
