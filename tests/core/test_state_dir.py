"""Scratch directories of local state: one per running process, wiped when taken."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from postwarden import state_dir


def test_each_running_process_gets_its_own_directory(tmp_path):
    first = state_dir.claim(tmp_path)
    second = state_dir.claim(tmp_path)
    assert (first.name, second.name) == ("slot-0", "slot-1")


def test_a_process_finding_every_directory_held_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(state_dir, "MAX_SLOTS", 1)
    state_dir.claim(tmp_path)
    with pytest.raises(state_dir.SlotTaken, match="held by running processes"):
        state_dir.claim(tmp_path)


def test_a_dead_process_directory_is_taken_again_and_wiped(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from postwarden.state_dir import claim
        path = claim(Path({str(tmp_path)!r}))
        (path / "users-0.db").mkdir()
        print(path, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        held = Path(holder.stdout.readline().strip())
        assert held.name == "slot-0" and (held / "users-0.db").is_dir()
        # While it runs, its slot is not handed out.
        assert state_dir.claim(tmp_path).name == "slot-1"
    finally:
        holder.kill()
        holder.wait()
    again = state_dir.claim(tmp_path)
    assert again == held and list(again.iterdir()) == []
