"""The one `fastinst` logger (`fastinst.log`): one line per message on the CLI's streams, silenced or taken over with
the standard `logging` calls, quiet outside rank 0, clear of a live tqdm bar; and no `print` in the library."""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

import pytest

from fastinst.errors import note
from fastinst.log import HANDLER, LOGGER, say

SRC = Path(__file__).resolve().parents[1] / "src" / "fastinst"


class Records(logging.Handler):
    """A user's own handler: keeps what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _logger_restored(monkeypatch):
    """Each test may change the logger as a user would; it is put back afterwards."""
    monkeypatch.delenv("RANK", raising=False)
    state = (LOGGER.level, list(LOGGER.handlers), LOGGER.propagate)
    yield
    LOGGER.setLevel(state[0])
    LOGGER.handlers[:] = state[1]
    LOGGER.propagate = state[2]


def test_a_note_is_one_line_on_stderr_and_results_go_to_stdout(capsys):
    note("3 images have no annotations")
    note("few images", level="warning")
    say("coco_val: mask AP 41.20", stdout=True)
    say("resumed from iteration 7")
    out, err = capsys.readouterr()
    assert err == "note: 3 images have no annotations\nwarning: few images\nresumed from iteration 7\n"
    assert out == "coco_val: mask AP 41.20\n"


def test_set_level_silences_it(capsys):
    logging.getLogger("fastinst").setLevel(logging.ERROR)
    note("a note")
    note("a warning", level="warning")
    say("a result", stdout=True)
    assert capsys.readouterr() == ("", "")


def test_a_user_handler_receives_the_records(capsys):
    mine = Records()
    logging.getLogger("fastinst").addHandler(mine)
    note("a run is there", level="warning")
    say("eval: fastinst-demo", stdout=True)
    first, second = mine.records
    assert (first.getMessage(), first.levelno, first.prefix) == ("a run is there", logging.WARNING, "warning")
    assert (second.getMessage(), second.levelno, second.prefix) == ("eval: fastinst-demo", logging.INFO, "")
    assert first.funcName == "test_a_user_handler_receives_the_records"  # the caller, not errors.note
    assert capsys.readouterr() == ("eval: fastinst-demo\n", "warning: a run is there\n")


def test_a_user_takes_the_messages_over(capsys):
    """Without fastinst's handler and with propagation, the root's handlers get every message and nothing is written
    on the streams."""
    logger = logging.getLogger("fastinst")
    logger.removeHandler(HANDLER)
    logger.propagate = True
    mine = Records()
    logging.getLogger().addHandler(mine)
    try:
        note("matched 2 predictions by file_name")
    finally:
        logging.getLogger().removeHandler(mine)
    assert [r.getMessage() for r in mine.records] == ["matched 2 predictions by file_name"]
    assert capsys.readouterr() == ("", "")


def test_other_ranks_say_nothing(capsys, monkeypatch):
    mine = Records()
    LOGGER.addHandler(mine)
    monkeypatch.setenv("RANK", "1")
    note("said once, by rank 0", level="warning")
    say("a result", stdout=True)
    assert capsys.readouterr() == ("", "") and mine.records == []
    monkeypatch.setenv("RANK", "0")
    note("said once, by rank 0")
    assert capsys.readouterr().err == "note: said once, by rank 0\n" and len(mine.records) == 1


def test_a_note_during_a_live_bar_starts_its_own_line(capsys):
    from tqdm import tqdm

    bar = tqdm(total=4, file=sys.stderr, desc="eval", mininterval=0)
    bar.update(1)
    note("an image decodes to a constant image", level="warning")
    bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    before, found, after = err.partition("warning: an image decodes to a constant image\n")
    assert found, err
    assert "1/4" in before and before.endswith("\r"), repr(before)  # the bar was drawn, then cleared
    assert "1/4" in after.split("\r")[1], repr(after)  # and drawn again below the line


def _print_calls(path: Path) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_no_print_outside_the_commands():
    """The library says things through the logger; only the CLI (`commands/`, `cli.py`) prints."""
    library = [p for p in sorted(SRC.rglob("*.py")) if p.relative_to(SRC).parts[0] != "commands" and p.name != "cli.py"]
    found = [f"{p.relative_to(SRC)}:{line}" for p in library for line in _print_calls(p)]
    assert not found, f"print() in the library (use fastinst.log.say or fastinst.errors.note): {found}"


def test_the_check_sees_a_print_call(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""print(1) in a docstring is text."""\n\n\ndef f():\n    print("x", file=None)\n')
    assert _print_calls(probe) == [5]


def test_the_logger_module_imports_the_standard_library_only():
    tree = ast.parse((SRC / "log.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "logging", "os", "sys", "typing"}, imported
