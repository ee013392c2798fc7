"""Issue 21, audio: recordings joined with `cat` decode whole, onnxruntime keeps no telemetry,
and a refused or noisy file leaves one line on stderr, not the decoders' or the bindings' chatter."""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SR, voice, write
from speakerdb.audio import decode as audio
from speakerdb.errors import AudioError

OGG_VORBIS = {"format": "OGG", "subtype": "VORBIS"}
OGG_OPUS = {"format": "OGG", "subtype": "OPUS"}
MP3 = {"format": "MP3", "subtype": "MPEG_LAYER_III"}


def _cat(out: Path, *parts: Path | bytes) -> Path:
    """What `cat a b > out` makes."""
    out.write_bytes(b"".join(p if isinstance(p, bytes) else p.read_bytes() for p in parts))
    return out


def _two_voices(tmp_path: Path, suffix: str, **kwargs) -> tuple[Path, Path]:
    """Two recordings of two voices: 3 s at 150 Hz, then 4 s at 250 Hz."""
    first = write(tmp_path / f"first{suffix}", voice(150, 3.0), **kwargs)
    second = write(tmp_path / f"second{suffix}", voice(250, 4.0, seed=1), **kwargs)
    return first, second


def _f0(samples: np.ndarray) -> float:
    """The strongest frequency of a stretch of 16 kHz audio, in Hz (the synthetic voices' fundamental)."""
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * SR / len(samples))


def _assert_both_voices(samples: np.ndarray) -> None:
    # Lossy codecs add encoder delay and padding to each part.
    assert len(samples) / SR == pytest.approx(7.0, abs=0.25)
    assert _f0(samples[: int(2.5 * SR)]) == pytest.approx(150, abs=5)  # the first speaker...
    assert _f0(samples[-3 * SR :]) == pytest.approx(250, abs=5)  # ...and the second, heard too


@pytest.mark.parametrize(
    "suffix, kwargs", [(".ogg", OGG_VORBIS), (".opus", OGG_OPUS), (".mp3", MP3)], ids=["vorbis", "opus", "mp3"]
)
def test_recordings_joined_with_cat_decode_whole(tmp_path, suffix, kwargs):
    # libsndfile stopped at the end of the first part: 3 of 7 s, the second speaker never heard.
    joined = _cat(tmp_path / f"call{suffix}", *_two_voices(tmp_path, suffix, **kwargs))
    clip = audio.load(joined)
    _assert_both_voices(clip.samples)
    # The streaming path (what embedding and the timeline read) sees the same.
    np.testing.assert_array_equal(np.concatenate(list(audio.stream(joined, block_s=1.0))), clip.samples)


def test_back_to_back_mp3s_of_different_rates_and_channels_decode_whole(tmp_path):
    first = write(tmp_path / "a.mp3", voice(150, 3.0), **MP3)
    wide = voice(250, 4.0, seed=1, sr=44_100)
    second = write(tmp_path / "b.mp3", np.stack([wide, wide], axis=1), sr=44_100, **MP3)  # stereo, 44.1 kHz
    clip = audio.load(_cat(tmp_path / "call.mp3", first, second))
    _assert_both_voices(clip.samples)


def _ogg_crc(page: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        crc &= 0xFFFFFFFF
    return crc


def _shift_granules(data: bytes, offset: int) -> bytes:
    """The same Ogg stream with every page's granule position (its end, in samples) moved on
    by ``offset``: how a part cut from a long live stream looks."""
    out = bytearray()
    at = 0
    while at < len(data):
        assert data[at : at + 4] == b"OggS"
        n_segments = data[at + 26]
        length = 27 + n_segments + sum(data[at + 27 : at + 27 + n_segments])
        page = bytearray(data[at : at + length])
        granule = struct.unpack_from("<q", page, 6)[0]
        if granule > 0:
            struct.pack_into("<q", page, 6, granule + offset)
        struct.pack_into("<I", page, 22, 0)
        struct.pack_into("<I", page, 22, _ogg_crc(page))
        out += page
        at += length
    return bytes(out)


def test_a_header_claiming_hours_does_not_refuse_a_short_chained_file(tmp_path):
    # The same stream twice (one serial number), the second part's granule positions 15 hours on:
    # libsndfile declared 54,003 s and the 6 s file was refused as longer than 4 hours.
    part = write(tmp_path / "part.ogg", voice(150, 3.0), **OGG_VORBIS).read_bytes()
    assert _shift_granules(part, 0) == part  # the rewriting itself changes nothing else
    path = _cat(tmp_path / "cut.ogg", part, _shift_granules(part, 15 * 3600 * SR))
    clip = audio.load(path)
    assert clip.duration_s == pytest.approx(6.0, abs=0.1)


def test_the_maximum_duration_counts_every_part_while_decoding(tmp_path, monkeypatch):
    joined = _cat(tmp_path / "call.ogg", *_two_voices(tmp_path, ".ogg", **OGG_VORBIS))
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_S", "5")  # the first part is 3 s, the file 7 s
    blocks = []
    with pytest.raises(AudioError, match="is longer than 5 s of audio|more than the 5 s accepted"):
        for block in audio.stream(joined, block_s=1.0):
            blocks.append(block)
    # Refused as the limit is crossed, not after decoding the whole file.
    assert sum(len(b) for b in blocks) / SR <= 5.0


def test_a_decoder_that_stops_early_says_so(tmp_path):
    # FFmpeg cannot join Ogg parts of different sample rates; libsndfile returned the first 3 s
    # as if they were the whole file.
    first = write(tmp_path / "a.ogg", voice(150, 3.0), **OGG_VORBIS)
    second = write(tmp_path / "b.ogg", voice(250, 4.0, seed=1, sr=44_100), sr=44_100, **OGG_VORBIS)
    path = _cat(tmp_path / "mixed.ogg", first, second)
    with pytest.raises(AudioError) as err:
        audio.load(path)
    assert err.value.reason.startswith("damaged or truncated audio")
    assert "after 3.0 s" in err.value.reason


@pytest.mark.parametrize(
    "suffix, kwargs",
    [(".wav", {}), (".flac", {}), (".aiff", {}), (".wav", {"subtype": "FLOAT"})],
    ids=["wav", "flac", "aiff", "wav-float"],
)
def test_files_with_their_own_length_joined_with_cat_decode_whole(tmp_path, suffix, kwargs):
    # A WAV, AIFF or FLAC header gives its own file's length: both decoders stopped at the end
    # of the first part (FFmpeg for WAV, libsndfile for FLAC), and the second voice was lost.
    joined = _cat(tmp_path / f"call{suffix}", *_two_voices(tmp_path, suffix, **kwargs))
    _assert_both_voices(audio.load(joined).samples)
    _assert_both_voices(np.concatenate(list(audio.stream(joined, block_s=1.0))))


def test_joined_files_of_different_rates_or_a_damaged_part_are_refused_saying_why(tmp_path):
    first = write(tmp_path / "a.wav", voice(150, 3.0))
    other_rate = write(tmp_path / "b.wav", voice(250, 3.0, sr=22_050), sr=22_050)
    with pytest.raises(AudioError, match="joined end to end at different sample rates"):
        audio.load(_cat(tmp_path / "rates.wav", first, other_rate))
    second = write(tmp_path / "b.flac", voice(250, 4.0, seed=1))
    joined = _cat(tmp_path / "cut.flac", write(tmp_path / "a.flac", voice(150, 3.0)), second.read_bytes()[:-2000])
    with pytest.raises(AudioError, match="damaged or truncated.*after 3.0 s|part 2"):
        audio.load(joined)


def test_the_declared_length_of_joined_files_is_their_sum(tmp_path, monkeypatch):
    # Refused before decoding, as one file of that length is.
    monkeypatch.setenv(audio.MAX_DURATION_ENV, "5")
    joined = _cat(tmp_path / "call.wav", *_two_voices(tmp_path, ".wav"))
    with pytest.raises(AudioError, match="declares 7"):
        audio.load(joined)


def test_junk_after_an_mp3_is_skipped_with_a_warning(tmp_path, caplog):
    first = write(tmp_path / "a.mp3", voice(150, 3.0), **MP3)
    path = _cat(tmp_path / "padded.mp3", first, b"\0" * 300_000)
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        clip = audio.load(path)
    assert clip.duration_s == pytest.approx(3.0, abs=0.1)
    assert any("not audio the decoder can read" in r.getMessage() for r in caplog.records)


# --- onnxruntime telemetry ------------------------------------------------------------------


def _python(code: str, home: Path) -> subprocess.CompletedProcess:
    # onnxruntime keeps no telemetry under CI=true: without it, as on a user's machine, it does.
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY", "CI")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("silero_vad") is None,
    reason="voice activity detection needs onnxruntime and silero-vad",
)
def test_voice_detection_leaves_no_onnxruntime_telemetry(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    _python("import onnxruntime", bare)
    if not (bare / ".cache" / "Microsoft").exists():
        pytest.skip("this onnxruntime keeps no telemetry store: nothing to turn off")
    home = tmp_path / "home"
    home.mkdir()
    done = _python(
        "import numpy as np\n"
        "from speakerdb.audio import vad\n"
        "probs = vad.probabilities([np.zeros(16000, np.float32)], vad.SileroVAD())\n"
        "assert len(probs) == 32\n",
        home,
    )
    assert done.returncode == 0, done.stderr
    assert not (home / ".cache" / "Microsoft").exists()
    assert list(home.iterdir()) in ([], [home / ".cache"])


# --- one line on stderr ---------------------------------------------------------------------


def _speakerdb(tmp_path: Path, checkpoint: Path, *args: str) -> subprocess.CompletedProcess:
    """The speakerdb command in its own process (its exit path, gc.freeze included, as users run it)."""
    command = [
        sys.executable,
        "-m",
        "speakerdb",
        "--db",
        str(tmp_path / "db.sqlite"),
        "--model",
        str(checkpoint),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


def _stderr_lines(done: subprocess.CompletedProcess) -> list[str]:
    """stderr without the tiny test model's own notice that its weights are random."""
    return [line for line in done.stderr.splitlines() if "RANDOM weights" not in line]


def test_a_refused_44k_file_prints_one_error_line(tmp_path, tiny_checkpoint):
    # Refused while the soxr resampler was live: its traceback kept it alive past exit and
    # nanobind printed 17 lines of "leaked" instances, types and functions after the error.
    rate = 44_100
    x = voice(150, 2.0, sr=rate)
    x[rate : rate + rate // 1000] = 3e38
    path = write(tmp_path / "burst.wav", x, sr=rate, subtype="FLOAT")
    done = _speakerdb(tmp_path, tiny_checkpoint, "enroll", "alice", str(path))
    assert done.returncode != 0
    [line] = _stderr_lines(done)
    assert line.startswith("Error:") and "impossible magnitude" in line


def test_mp3s_decode_without_decoder_chatter(tmp_path, tiny_checkpoint):
    # mpg123 (inside libsndfile) printed "Warning: Xing stream size off ..." and "Note: Illegal
    # Audio-MPEG-Header ... Trying to resync... Skipped 224 bytes" for this one.
    first, second = _two_voices(tmp_path, ".mp3", **MP3)
    path = _cat(tmp_path / "call.mp3", first.read_bytes()[:-100], second)
    done = _speakerdb(tmp_path, tiny_checkpoint, "enroll", "alice", str(path))
    assert done.returncode == 0, done.stderr
    assert _stderr_lines(done) == []
