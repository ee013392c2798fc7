"""Audio in: a recording to 16 kHz mono float32 samples (:mod:`.decode`), and where speech is
in it (:mod:`.vad`). The names a user of the Python API needs are re-exported here::

    from speakerdb.audio import Audio, prepare
    clip = Audio("call-17", prepare(samples, sample_rate))
"""

from .decode import SAMPLE_RATE, Audio, check_samples, load, prepare, stream

__all__ = ["SAMPLE_RATE", "Audio", "check_samples", "load", "prepare", "stream"]
