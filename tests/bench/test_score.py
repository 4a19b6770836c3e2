"""bench/score.py runs end to end on a corpus it is given and prints scoring's cost
against the stdlib parser timed on the same messages."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCORE = ROOT / "bench" / "score.py"


def test_prints_the_ratio_to_a_compat32_parse(tmp_path):
    group = tmp_path / "corpus" / "easy_ham"
    group.mkdir(parents=True)
    manifest = ["sha256\tlabel\tgroup"]
    for i, name in enumerate(["hello.eml", "spam.eml"] * 3):
        raw = (ROOT / "examples" / name).read_bytes().replace(b"Subject: ", f"Subject: {i} ".encode(), 1)
        (group / f"{i}.txt").write_bytes(raw)
        manifest.append(f"{hashlib.sha256(raw).hexdigest()}\t{'spam' if 'spam' in name else 'ham'}\teasy_ham")
    (tmp_path / "train.tsv").write_text("\n".join(manifest) + "\n")
    proc = subprocess.run([sys.executable, str(SCORE), "--manifest", str(tmp_path / "train.tsv"),
                           "--corpus", str(tmp_path / "corpus")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "messages: 6," in proc.stdout
    m = re.search(r"scoring ([\d.]+) ms, stdlib parser alone ([\d.]+) ms with policy.compat32 "
                  r"\(([\d.]+) ms with policy.default\); scoring = ([\d.]+)x a compat32 parse", proc.stdout)
    assert m, proc.stdout
    score_ms, compat_ms, default_ms, ratio = map(float, m.groups())
    assert 0 < compat_ms < score_ms and default_ms > 0
    assert abs(ratio - score_ms / compat_ms) <= 0.05 * ratio + 0.1
