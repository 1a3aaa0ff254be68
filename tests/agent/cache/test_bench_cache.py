"""``scripts/bench cache`` runs end to end on a tiny artifact and reports every
figure the issue asks for (the figures themselves are not judged here)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import zstandard as zstd

from scripts.benchlib import cache as bench
from scripts.benchlib.main import parser
from scripts.benchlib.report import finish


def test_sizes_parse() -> None:
    assert [bench.parse_size(s) for s in ("1MiB", "100MiB", "1GiB", "64KiB", "2MB", "512")] == [
        1 << 20, 100 << 20, 1 << 30, 64 << 10, 2_000_000, 512
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_size("12 parsecs")


def test_generated_artifact_is_half_compressible(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    bench.generate(path, 3 << 20)
    data = path.read_bytes()
    assert len(data) == 3 << 20
    half = 1 << 19
    assert re.fullmatch(rb"[-+.e0-9, ]+", data[half : 2 * half])  # the text half of a block
    assert 1.3 < len(data) / len(zstd.ZstdCompressor().compress(data)) < 3


def test_bench_cache_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = ["cache", "--sizes", "64KiB", "--repeat", "1", "--no-model",
            "--dir", str(tmp_path / "work"), "--json", str(out)]
    args = parser().parse_args(argv)  # as scripts/bench parses it (no signal handlers here)
    finish(bench.run(args), args.json)
    result = json.loads(out.read_text())
    [row] = result["artifacts"]
    assert row["size_bytes"] == 64 << 10
    for key in ("ratio", "compress_mb_s", "decompress_mb_s", "unpack_vs_copy",
                "unpack_vs_copy_fsync", "cold_from_cache_vs_storage"):
        assert row[key] > 0, key
    assert result["cold_from_cache_vs_storage"] == row["cold_from_cache_vs_storage"]
    assert set(result["targets"]) >= {"decompress_met", "unpack_vs_copy_met"}
    assert list((tmp_path / "work").iterdir()) == []  # its work dir is removed
