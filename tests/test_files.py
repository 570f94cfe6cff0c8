"""The one output-path guard (`fastinst.files.check_output`) every writing command runs before any work."""

from __future__ import annotations

import os

import pytest

from fastinst.cli import main
from fastinst.errors import FastInstError
from fastinst.files import check_output, same_file


def test_an_output_that_is_an_input_is_refused(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text("{}")
    for spelled in (ann, tmp_path / "x" / ".." / "ann.json"):
        with pytest.raises(FastInstError, match="--output is also an input"):
            check_output(spelled, inputs=[ann], kind="file")
    link = tmp_path / "link.json"
    link.symlink_to(ann)
    assert same_file(link, ann)
    with pytest.raises(FastInstError, match="--output is also an input"):
        check_output(link, inputs=[ann], kind="file")
    assert check_output(tmp_path / "out.json", inputs=[ann], kind="file") == tmp_path / "out.json"


def test_file_versus_folder(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FastInstError, match="must be a folder, but this is an existing file"):
        check_output(tmp_path / "a_file", kind="dir")
    with pytest.raises(FastInstError, match="must be a file path, but this is an existing folder"):
        check_output(tmp_path, kind="file")
    with pytest.raises(FastInstError, match="a_file is a file, not a folder"):
        check_output(tmp_path / "a_file" / "deeper" / "out.json", kind="file")
    assert check_output(tmp_path / "new" / "deeper", kind="dir") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the guard creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_place_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(FastInstError, match="no permission to write"):
            check_output(locked / "out", kind="dir")
    finally:
        locked.chmod(0o700)


def test_export_refuses_to_overwrite_its_weights_in_one_line(tmp_path, capsys):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"not really")
    before = weights.read_bytes()
    assert main(["export", "--model", "fastinst-demo", "--weights", str(weights), "--output", str(weights)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {weights}: --output is also an input; choose another path so the input is not replaced"]
    assert weights.read_bytes() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_place_the_permission_bits_allow_but_the_system_refuses(tmp_path):
    """/proc takes no new files even for root: the guard tries a write instead of trusting `os.access`."""
    with pytest.raises(FastInstError, match=r"/proc/fastinst_out: cannot write here: .* in /proc"):
        check_output("/proc/fastinst_out", kind="dir")
    with pytest.raises(FastInstError, match="cannot write here"):
        check_output("/proc/x.json", kind="file")
    assert not list(tmp_path.iterdir())


def test_an_os_error_naming_a_file_is_one_line(monkeypatch, capsys):
    """A write that fails after the guard (a disk that fills up, a mount turned read-only) is one line naming the
    file, exit 2; an OSError that names no file is a bug and keeps its traceback."""
    import fastinst.commands.info as info

    def full_disk(args):
        raise OSError(28, "No space left on device", "/data/run/last.pth")

    monkeypatch.setattr(info, "run", full_disk)
    assert main(["info"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: /data/run/last.pth: No space left on device"]

    def bug(args):
        raise OSError("no file involved")

    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(OSError, match="no file involved"):
        main(["info"])
