"""The WFDB reader and beat scoring, on synthetic files with known content and on the shared
PhysioNet recordings."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from telemon.recordings import RecordError, read_annotations, read_record, score_beats

PHYSIONET = SHARED_DATA / "physionet"
needs_physionet = pytest.mark.skipif(not PHYSIONET.is_dir(),
                                     reason=f"{PHYSIONET} is absent (shared test data)")


def pack_212(samples: np.ndarray) -> bytes:
    """Format 212 written the way signal(5) describes it, to read back."""
    flat = samples.astype(np.int64).ravel() & 0xFFF
    if len(flat) % 2:
        flat = np.append(flat, 0)
    out = bytearray()
    for a, b in flat.reshape(-1, 2):
        out += bytes([a & 0xFF, (a >> 8) | ((b >> 8) << 4), b & 0xFF])
    return bytes(out)


def test_format_212_two_signals_with_gains_baselines_and_invalid_samples(tmp_path):
    digital = np.array([[0, 5], [2047, -2047], [-1, 1], [-2048, 100], [1000, -1000]])
    (tmp_path / "r.dat").write_bytes(pack_212(digital))
    (tmp_path / "r.hea").write_text("r 2 360 5\n"
                                    "r.dat 212 200 11 1024 0 0 0 MLII\n"
                                    "r.dat 212 100(10)/uV 11 0 0 0 0 V5\n# age 60\n")
    rec = read_record(tmp_path / "r")
    assert rec.fs == 360 and rec.channels == ("MLII", "V5") and rec.units == ("mV", "uV")
    assert rec.comments == ("age 60",)
    expected_0 = (digital[:, 0] - 1024) / 200
    expected_1 = (digital[:, 1] - 10) / 100
    expected_0[3] = np.nan  # -2048 is "no data" in format 212
    np.testing.assert_array_equal(rec.signals[:, 0], expected_0)
    np.testing.assert_array_equal(rec.signals[:, 1], expected_1)


def test_format_16_with_a_byte_offset_as_in_mat_files(tmp_path):
    digital = np.array([[1, -2, 3], [-32768, 32767, 0]], dtype="<i2")
    (tmp_path / "m.mat").write_bytes(b"x" * 24 + digital.tobytes())
    (tmp_path / "m.hea").write_text("m 3 250 2\n" + "".join(
        f"m.mat 16+24 2/mV 16 0 0 0 0 S{i}\n" for i in range(3)))
    rec = read_record(tmp_path / "m")
    np.testing.assert_array_equal(rec.signals, [[0.5, -1, 1.5], [np.nan, 16383.5, 0]])


@pytest.mark.parametrize("header, message", [
    (None, "cannot be read"),
    ("", "no record line"),
    ("r 2 360 5\nr.dat 212 200 11 1024 0 0 0 MLII\n", "announces 2 signals, describes 1"),
    ("r 1 360 5\nr.dat 311 200 11 1024 0 0 0 MLII\n", "format 311 is not supported"),
    ("r 1 360 500\nr.dat 212 200 11 1024 0 0 0 MLII\n",
     "holds 6 samples per signal, header says 500"),
    ("r 1 360 5\nr.dat 212 abc 11 1024 0 0 0 MLII\n", "bad gain 'abc'"),
])
def test_bad_records_say_why(tmp_path, header, message):
    (tmp_path / "r.dat").write_bytes(pack_212(np.zeros(5)))
    if header is not None:
        (tmp_path / "r.hea").write_text(header)
    with pytest.raises(RecordError, match=message):
        read_record(tmp_path / "r")


def test_annotations_with_skip_aux_and_num_words(tmp_path):
    def word(code, value):
        return (code << 10 | value).to_bytes(2, "little")

    data = (word(28, 18) + word(63, 3) + b"(N\x00\x00"  # rhythm '+' at 18 with aux "(N"
            + word(1, 59)                               # N at 77
            + word(59, 0) + (1).to_bytes(2, "little") + (5).to_bytes(2, "little")
            + word(5, 0)                                # SKIP 65541, then V at 65618
            + word(60, 1) + word(14, 2)                 # NUM (ignored), noise '~' at 65620
            + word(0, 0))
    (tmp_path / "r.atr").write_bytes(data)
    ann = read_annotations(tmp_path / "r")
    assert ann.symbols == ("+", "N", "V", "~")
    assert ann.samples.tolist() == [18, 77, 77 + 65541, 77 + 65541 + 2]
    assert ann.beats().tolist() == [77, 77 + 65541]


def test_scoring_matches_one_to_one_within_the_window():
    fs = 100  # 150 ms = 15 samples
    reference = [100, 200, 300, 400]
    detected = [110, 112, 215, 316, 500]  # 112: second hit on one beat; 316: 16 samples off
    score = score_beats(detected, reference, fs)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (2, 3, 2)
    assert score.sensitivity == 0.5 and score.positive_predictivity == 0.4


@needs_physionet
def test_mit_bih_100():
    rec = read_record(PHYSIONET / "100")
    assert rec.signals.shape == (650000, 2) and rec.fs == 360
    assert rec.channels == ("MLII", "V5")
    np.testing.assert_allclose(rec.signals[0], [(995 - 1024) / 200, (1011 - 1024) / 200])
    beats = read_annotations(PHYSIONET / "100").beats()
    assert len(beats) == 2273  # as the database lists for record 100
    assert score_beats(beats, beats, rec.fs).sensitivity == 1.0


@needs_physionet
@pytest.mark.parametrize("name, channels, first", [
    ("v102s", ("II", "V", "PLETH", "RESP"), -26 / 2281),
    ("a103l", ("II", "V", "PLETH"), -171 / 7247),
])
def test_challenge_2015_records(name, channels, first):
    rec = read_record(PHYSIONET / name)
    assert rec.channels == channels and rec.fs == 250
    assert rec.comments[-1] == "False alarm"
    assert rec.signals[0, 0] == pytest.approx(first)
