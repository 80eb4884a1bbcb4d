"""Reading a backend's log tail: what /logs and `modelgw logs -f` show."""

from __future__ import annotations

from pathlib import Path

from supervisor.process import read_tail


def test_the_tail_keeps_a_finished_last_line_finished(tmp_path: Path) -> None:
    log = tmp_path / "backend.log"
    log.write_text("one\ntwo\nthree\n")
    assert read_tail(log, 2, 1024) == "two\nthree\n"
    log.write_text("one\ntwo\nthree (still being writ")
    assert read_tail(log, 2, 1024) == "two\nthree (still being writ"


def test_a_line_cut_by_the_byte_window_is_left_out(tmp_path: Path) -> None:
    log = tmp_path / "backend.log"
    log.write_text("".join(f"line {i:03d}\n" for i in range(100)))  # 9 bytes a line
    assert read_tail(log, 100, 40) == "line 096\nline 097\nline 098\nline 099\n"
    assert read_tail(log, 2, 40) == "line 098\nline 099\n"


def test_a_missing_or_empty_log_is_empty(tmp_path: Path) -> None:
    assert read_tail(tmp_path / "absent.log", 5, 1024) == ""
    (tmp_path / "empty.log").write_bytes(b"")
    assert read_tail(tmp_path / "empty.log", 5, 1024) == ""
