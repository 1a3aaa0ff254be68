"""`meshlet infer` usage errors: one line on stderr, exit 2, nothing sent (the
address is a closed port, so anything sent would exit 1 instead)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.cli.errors import EXIT_USAGE
from agent.cli.main import main


@pytest.fixture
def address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the inputs with --input NAME=v1,v2,..., --json FILE or --npy NAME=FILE"),
        (["--input", "x"], "--input 'x' is not NAME=v1,v2,..."),
        (["--input", "x=1,2", "--input", "x=3"],
         "input x: row 2 has 1 values but row 1 has 2; each --input x=... is one row"),
        (["--input", "x=1,2,3", "--shape", "x=2,2"], "input x: 3 values do not fit --shape [2, 2]"),
        (["--input", "x=1", "--shape", "x=a"],
         "--shape 'x=a': dimensions are whole numbers >= 0, comma-separated (NAME=2,3)"),
        (["--input", "x=1", "--datatype", "x=INT8", "--input", "x=300"],
         "input x: value 1 '300' is not a valid INT8 (byte format requires -128 <= number "
         "<= 127)"),
        (["--input", "x=1", "--datatype", "y=FP32"],
         "--datatype names input y, which no --input, --json or --npy gives"),
        (["--input", "x=1", "--output", "yaml"],
         "--output 'yaml': the format is text or json (to choose outputs, use --output-name "
         "NAME)"),
        (["--npy", "x=/nonexistent/x.npy"],
         "input x: cannot read --npy /nonexistent/x.npy ([Errno 2] No such file or directory: "
         "'/nonexistent/x.npy')"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], message: str, address: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["infer", "m", *args, "--address", address])
    captured = capsys.readouterr()
    assert (code, captured.out, captured.err) == (EXIT_USAGE, "", f"error: {message}\n")


def test_a_bad_json_file_names_itself(tmp_path: Path, address: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    body = tmp_path / "request.json"
    body.write_text('{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1]}]}')
    assert main(["infer", "m", "--json", str(body), "--address", address]) == EXIT_USAGE
    assert capsys.readouterr().err == "error: input x: 1 values do not fit its shape [2]\n"
    body.write_text("{}")
    assert main(["infer", "m", "--json", str(body), "--address", address]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f'error: --json {body}: expected {{"inputs": [{{"name", "shape", "datatype", '
        '"data"}, ...]}\n')


def test_help_shows_the_sources_and_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    for flag in ("--input NAME=V1,V2,...", "--json FILE", "--npy NAME=FILE",
                 "--shape NAME=D1,D2,...", "--datatype NAME=TYPE", "--output-name NAME",
                 "--output FORMAT"):
        assert flag in text
    assert "meshlet infer my-lr --input x=5.1,3.5,1.4,0.2 --input x=6.7,3.0,5.2,2.3" in text
