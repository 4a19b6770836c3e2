"""bench/model_cv.py: arguments it refuses before it reads the corpus, and the token scores it keeps."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streams import spam_model, training
from tests.streams.scoring_fixtures import training_corpus

MODEL_CV = Path(__file__).resolve().parents[2] / "bench" / "model_cv.py"


@pytest.mark.parametrize("args, error", [
    (["--folds", "1"], "--folds must be at least 2, not 1"),
    (["--processes", "0"], "--processes must be at least 1, not 0"),
    (["--partitions", "0"], "--partitions must be at least 1, not 0"),
    (["--start", "-1"], "--start must be at least 0, not -1"),
    (["--scores", "{tmp}/file"], "--scores {tmp}/file is not a directory"),
    (["--scores", "{tmp}/file/scores"], "--scores {tmp}/file/scores: cannot make the directory (Not a directory)"),
    (["--folds", "1", "--scores", "{tmp}/new"], "--folds must be at least 2, not 1"),
])
def test_bad_arguments_get_one_usage_error(tmp_path, args, error):
    # A corpus that is not there: reaching it would fail differently, so the
    # error below can only come from the argument check.
    (tmp_path / "file").write_text("not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    error = error.replace("{tmp}", str(tmp_path))
    env = {"POSTWARDEN_CORPUS_DIR": str(tmp_path / "none"),
           "POSTWARDEN_CORPUS_MANIFEST": str(tmp_path / "none.tsv"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(MODEL_CV), *args], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert error in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "new").exists()  # refused arguments make nothing


def _run(args: list[str], manifest: Path, corpus: Path) -> str:
    env = {"POSTWARDEN_CORPUS_DIR": str(corpus), "POSTWARDEN_CORPUS_MANIFEST": str(manifest), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(MODEL_CV), *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _figures(out: str) -> list[str]:
    # Every line with a rate, each partition's run time cut off.
    return [re.sub(r"\s+\d+ s$", "", line) for line in out.splitlines() if "%" in line]


def test_kept_token_scores_are_reused_and_give_the_same_figures(tmp_path):
    manifest, corpus = training_corpus(tmp_path)
    kept = tmp_path / "kept" / "scores"  # made by the first run
    args = ["--partitions", "2", "--processes", "1"]
    plain = _run(args, manifest, corpus)
    first = _run([*args, "--scores", str(kept)], manifest, corpus)
    second = _run([*args, "--scores", str(kept)], manifest, corpus)
    assert "0 of 2 partitions reused" in first and "2 of 2 partitions reused" in second
    assert len(list(kept.glob("*.npz"))) == 2
    assert len(_figures(plain)) == 2 * 4 + 4
    assert _figures(first) == _figures(plain) and _figures(second) == _figures(plain)


def test_kept_token_scores_go_stale_with_their_inputs_settings_or_code(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("model_cv", MODEL_CV)
    model_cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_cv)
    manifest, corpus = training_corpus(tmp_path)
    data = training.prepare(training.load_examples(manifest, corpus))
    fold = training.folds(data)
    key = model_cv._token_models_key(data.rows, fold)
    assert model_cv._token_models_key(data.rows, fold) == key
    assert model_cv._token_models_key(data.rows, training.folds(data, "p1")) != key
    assert model_cv._token_models_key(data.rows.take(np.arange(1, 40)), fold[1:]) != key
    monkeypatch.setattr(training, "L2", training.L2 * 2)
    assert model_cv._token_models_key(data.rows, fold) != key
    monkeypatch.undo()
    original = spam_model.fit_nb

    def fit_nb(x, y, alpha):  # the same settings, other code
        return original(x, y, alpha * 2)

    monkeypatch.setattr(spam_model, "fit_nb", fit_nb)
    assert model_cv._token_models_key(data.rows, fold) != key
