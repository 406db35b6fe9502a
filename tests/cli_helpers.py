"""Running the `maskpipe` CLI in tests the way a user meets it."""

from __future__ import annotations

from maskpipe.cli import main


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI, expect exit code 2 and one error line without a traceback; return it."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(lines) == 1, captured.err
    return lines[0]
