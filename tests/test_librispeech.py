"""Accuracy on real speech with the pretrained GE2E encoder (needs ../shared/data/librispeech and the extra).

Bounds are set from the figures measured with (docs/accuracy.md, "Measured accuracy"):

    speakerdb --model resemblyzer evaluate ../shared/data/librispeech/test-other \\
        --impostors ../shared/data/librispeech/train-clean-100

which gave top-1 100 %, EER 0.31 % (56 target / 2,560 non-target trials). The bounds
leave room for other CPUs and library versions, not for a broken pipeline: a random or
mis-wired encoder scores near top-1 1/8 and EER 50 %.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from speakerdb.scoring import evaluate
from speakerdb.workflows import evaluation_database

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech"

pytestmark = [
    pytest.mark.librispeech,
    pytest.mark.skipif(not (DATA / "test-other").is_dir(), reason=f"LibriSpeech excerpts not found at {DATA}"),
]


def test_ge2e_accuracy_on_librispeech_test_other():
    pytest.importorskip("resemblyzer", reason='the GE2E encoder needs pip install -e ".[resemblyzer]"')
    report, scores, _ = evaluate.run(
        DATA / "test-other", model="resemblyzer", impostor_dirs=[DATA / "train-clean-100"], open_db=evaluation_database
    )
    assert (report.n_enrolled_speakers, report.n_impostor_speakers) == (8, 253)
    assert (report.n_target_trials, report.n_nontarget_trials) == (56, 2560)
    assert report.top1 >= 0.95
    assert report.eer <= 0.02
    assert report.dir["0.1"]["dir"] >= 0.95
