"""Who is speaking now: a timeline built while the audio still arrives.

    frames (bytes or floats) -> pcm decode -> streaming resample to 16 kHz -> VAD block by block
      -> speech regions as they settle -> windows embedded as they complete (batched)
      -> each window joined to an online voice (or a new one) -> voices named from the gallery
      -> provisional ``voice`` events, then ``final`` ones once a region can no longer change
      -> close(): the timeline of the whole session, assembled as ``timeline`` assembles a file

A :class:`LiveSession` is what :meth:`speakerdb.SpeakerDB.stream` returns. ``feed`` takes the
next frame of audio (any length) and returns the events it caused; ``enroll`` turns a voice
heard so far into an enrolled speaker; ``close`` returns a :class:`~speakerdb.results.Timeline`.

Regions. The VAD (:mod:`speakerdb.audio.vad`) runs on each block as it comes; its speech
regions (hysteresis, minimum lengths, padding) are kept up to date from each block's new frames
alone (:class:`speakerdb.audio.vad.RegionTracker`), so a block costs the same an hour into
speech that never pauses as a second into it. A region is *settled* (final) once no later
frame can change it: when another region follows it, or when more than :data:`SETTLE_S` of
audio has passed its end (the longest stretch over which a region still open could merge with
it or clip its padding). Settled regions, and the windows planned over them
(:func:`speakerdb.timeline.plan_windows`), are exactly those ``timeline`` finds for the same
audio as a file.

Noise. As ``timeline`` does for a file, the session measures how far its speech stands above
its pauses and the noise of those pauses (:class:`speakerdb.audio.denoise.NoiseMeter`). It
judges once: as soon as the meter can tell, else :data:`JUDGE_WAIT_S` after its first speech
began; until then it embeds no window (a region that settles meanwhile, a short "hello?"
followed by a pause, waits with its audio). Asked to enroll a voice before it can tell, it
embeds the whole windows that waited as they came and goes on judging: a verdict on a
fraction of a second of speech would stand for the whole call. A noisy session
(speech less than ``denoise.NOISY_SNR_DB`` above its pauses) has the noise of the pauses heard
so far taken out of every window before it is embedded, and its timeline says so. ``timeline`` also finds a
noisy file's speech again in the denoised audio and measures its noise over the whole file,
so the final timeline of a noisy session is not the file's.

Windows and voices. Inside a region still open, the windows of the plan (``window_s`` long,
every ``hop_s`` from the region's start) are embedded as soon as their audio is there (each block
looks only at those after the last one embedded), in one
call of the ``embed_windows`` hook per block (equal lengths, so they stack; the service's hook
stacks them with other callers' windows). Each window vector joins the online voice whose
mean vector it is closest to, if their cosine reaches the gallery's cosine threshold minus
``timeline.CLUSTER_MARGIN`` (one window against a voice's mean), or starts a new voice. That cut
lets two people in one room be one voice, so the voices are clustered again as they come: when a
region settles or while one stays open, at most every :data:`RECLUSTER_S` of audio (less often
past :data:`RECLUSTER_ITEMS` items), the held windows, settled and open, are clustered with
``timeline``'s own clustering (:func:`speakerdb.clustering.voices`, as the final timeline's
assembly calls it, on at most :data:`RECLUSTER_MAX_ITEMS` items); each cluster becomes the
live voice that holds most of its windows (a new voice if those all went to other clusters),
held to the live voices by the gallery's threshold on their means (:meth:`LiveSession._checked`),
and the voices' means and names are taken again.
A voice left with no windows keeps its label, unused.
A voice is named after the enrolled speaker its mean vector scores best against, when that
score reaches the database's threshold (AS-norm when normalisation is on), as ``timeline``
names a voice; an unnamed voice is ``unknown-N``, numbered in the order voices are first
reported, and keeps that label for the whole session. A ``voice`` event with ``final: false``
reports the voice of the latest windows of an open region; when the region settles, its last
windows (the one aligned to its end, or a short region's only one) are embedded, its windows'
voices (clustered again, if it is time) are smoothed (Viterbi, as ``timeline``) and
``final: true`` events give its segments, once none of its voices is young (unnamed, with less
than :data:`RIPE_S` of speech), or :data:`HOLD_MAX_S` after its end, in time order.

The final timeline. ``close()`` assembles the settled regions' window vectors with
:func:`speakerdb.timeline.assemble`, the step after embedding of ``timeline``: fed the same
audio, a session's final timeline is the one ``timeline`` gives for the file. Its unknown
voices are numbered as ``timeline`` numbers them (by first appearance), which usually, but
not always, agrees with the live labels.

Memory. The session holds the audio of the regions still open (a few seconds: only from the
first window not yet embedded; while it judges its noise, from the first region it heard),
the VAD's state at its last frame (a few numbers, and the regions not yet settled), one vector
per window of speech and each voice's running sums; while it judges its noise, the levels of
the last :data:`JUDGE_LEVELS_S` (to twice that) of frames, and if noisy, one noise spectrum.
Window vectors, of settled regions and of the region still open alike, are kept for up to
``max_held_s`` seconds of speech (default :data:`DEFAULT_MAX_HELD_S`: an hour of talk); beyond,
the oldest settled regions are dropped and their final segments kept (a few numbers each), and
when the region still open alone holds more (speech that never pauses), its oldest windows are
made final: smoothed with the next :data:`LOOK_AHEAD_S` of windows as look-ahead, reported as
``final`` events while it goes on and let go, :data:`LET_GO_S` at a time. Memory stays flat for
a session of any length, whether or not its speakers pause, and the final timeline of such a
session is the live one (its final segments) rather than a re-assembly, which ``notes`` says.
At most :data:`MAX_VOICES` voices are kept apart; past that a window joins its nearest voice.

Enrollment. ``enroll(label, name)`` averages the held window vectors of the voice reported as
``label`` into one utterance and enrolls it through the database's normal path (the index,
the audit record and the enrollment checks as for a file; no audio is stored); later windows
of that voice are then named ``name``. Past ``max_held_s`` those are its most recent windows:
a voice that has spoken longer is enrolled from the latest of its speech only.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import clustering
from . import timeline as timelines
from .audio import decode as audio
from .audio import denoise, pcm, vad
from .embedding.models import l2_normalize
from .embedding.pipeline import EmbeddedClip
from .errors import AudioError, InvalidInputError
from .results import (
    EnrolledEvent,
    LiveEvent,
    Params,
    Segment,
    SpeechEvent,
    Timeline,
    Voice,
    VoiceEvent,
)
from .storage import store

SR = audio.SAMPLE_RATE
#: Audio is taken through the VAD and the windows in blocks of this much: frames of 20 ms are
#: gathered first, so the per-block work (a VAD call, the regions, a batch of windows) is paid
#: a few times a second, not fifty.
TICK_S = 0.16
#: A region whose end lies this far before the last VAD frame can no longer change: a region
#: still open (at most min_silence + min_speech old while too short to count) merges with it or
#: clips its padding only if it starts within 2 x pad of its end.
SETTLE_S = 2 * vad.DEFAULT_PAD_S + vad.DEFAULT_MIN_SPEECH_S + vad.DEFAULT_MIN_SILENCE_S + 2 * vad.FRAME_S
#: Seconds of speech whose window vectors a session keeps for its final timeline and for
#: enrollment (an hour of talk: 7,200 windows, 15 MiB of 512-d vectors); see the module doc.
DEFAULT_MAX_HELD_S = 3600.0
#: A turn that goes on past the cap without a pause has its oldest windows made final this much
#: speech at a time (s; a quarter of the cap if that is less), each stretch smoothed with the
#: next LOOK_AHEAD_S of windows: the work of each is the same whatever the cap.
LET_GO_S = 60.0
LOOK_AHEAD_S = 30.0
MAX_VOICES = 256  # voices told apart in one session; past that a window joins its nearest voice
#: A settled region's final events wait while one of its voices is unnamed with less than this
#: much speech (s of windows' hops): a call's first second, or a short turn that made a voice of
#: its own, is reported once the voice is named or has grown, or a re-clustering joined it to
#: another, rather than as an unknown voice that is the named one a moment later.
RIPE_S = 3.0
#: ... but no longer than this (s of audio after the region's end): past it, they go as they are.
HOLD_MAX_S = 10.0
#: The session's voices are clustered again (``timeline``'s clustering of all its held windows)
#: at most every this many seconds of audio, when a region settles or while one stays open...
RECLUSTER_S = 3.0
#: ... and, past this many items, that interval grows with the cube of the items, as the
#: clustering's eigendecompositions do: its CPU share stays bounded.
RECLUSTER_ITEMS = 200
#: The items a re-clustering decomposes at most (runs of neighbouring windows averaged, as the
#: final timeline does past clustering.MAX_ITEMS): it runs inside ``feed``, and at 1,000 items
#: one took ~1.9 CPU s, a stream's events that much late (docs/live.md).
RECLUSTER_MAX_ITEMS = 300
SOURCE_LABEL = "live"  # the final timeline's ``file``
#: A session embeds no window of its speech until it has judged its noise (heard
#: ``denoise.MIN_SPEECH_FRAMES`` frames of speech and ``denoise.MIN_NOISE_FRAMES`` of pause), or
#: until this long after its first speech began (s), when it judges with what it has heard:
#: a noisy call's first windows are then denoised like the rest, at the cost of a first
#: provisional event this much later at worst.
JUDGE_WAIT_S = 5.0
#: Seconds of audio whose levels a session judging its noise keeps at least (the latest; at
#: most twice as many, trimmed now and then: :class:`speakerdb.audio.denoise.NoiseMeter`).
JUDGE_LEVELS_S = 60.0
#: How often, at most, a session asks whether the database's speakers changed (seconds of wall
#: time): a speaker removed, expired or opted out is named by no session for longer than this.
GALLERY_CHECK_S = 1.0

#: Embeds equal-length 16 kHz float32 windows: (n, dim) float32 rows of norm 1.
EmbedWindows = Callable[[list[np.ndarray]], np.ndarray]
#: Enrolls one clip of window vectors: (name, clip, add) -> anything (the facade's result).
EnrollClip = Callable[[str, EmbeddedClip, bool], object]
#: The gallery again if the database's speakers changed since it was last read, else None.
RefreshGallery = Callable[[], "timelines.Gallery | None"]


@dataclass
class _Voice:
    """One voice heard in the session: running weighted sum of its window vectors, and its name."""

    total: np.ndarray  # (dim,) float64: sum of weight x unit window vector
    weight: float  # seconds of windows
    speaker: str | None = None  # the enrolled name it scores to, or None
    score: float | None = None  # its mean vector against the named (or nearest) centroid
    number: int = 0  # N of unknown-N, given when first reported unnamed
    # The part of total / weight from windows let go (the memory cap): a re-clustering, which
    # sums the held windows again, keeps it.
    gone: np.ndarray | None = None
    gone_weight: float = 0.0

    @property
    def profile(self) -> np.ndarray:
        return self.total / max(float(np.linalg.norm(self.total)), 1e-12)


@dataclass
class _Region:
    """A settled region: its place in the plan and what the session keeps of it."""

    region: vad.Region
    first_span: int  # index of its first window in the held spans
    n_spans: int
    start_s: float  # where its final segments begin (its start, or where the open region's let-go ended)
    segments: list[tuple[float, float, int, float | None]] = field(default_factory=list)  # (start, end, voice, score)


class LiveSession:
    """A live identification session; see the module doc. Use from one thread at a time.

    Built by :meth:`speakerdb.SpeakerDB.stream`; direct construction takes the parts it
    gives: ``embed_windows`` (windows -> unit vectors), ``gallery`` (who can be named, the
    thresholds), ``reload_gallery`` (the gallery after an enrollment) and ``enroll_clip``
    (enrolls a clip of window vectors), the timeline's ``params``, a VAD ``detector`` and
    ``seen`` (told the enrolled names that final events named: their ``last_seen``).
    ``refresh_gallery`` (the gallery if the database changed, else None) is asked at most every
    ``GALLERY_CHECK_S`` and at the end: a speaker removed meanwhile (remove, expire, opt-out)
    is no longer named, nor in the final timeline.
    """

    def __init__(
        self,
        embed_windows: EmbedWindows,
        gallery: timelines.Gallery,
        *,
        sample_rate: int = SR,
        encoding: str = "f32",
        params: Params | None = None,
        detector: Any = None,
        reload_gallery: Callable[[], timelines.Gallery] | None = None,
        enroll_clip: EnrollClip | None = None,
        max_held_s: float = DEFAULT_MAX_HELD_S,
        seen: Callable[[list[str]], None] | None = None,
        refresh_gallery: RefreshGallery | None = None,
    ) -> None:
        self.sample_rate = pcm.check_sample_rate(sample_rate)
        self.encoding = pcm.check_encoding(encoding)
        self.params = (params or Params()).check()
        if not max_held_s > 0:
            raise InvalidInputError(f"max_held_s must be positive, not {max_held_s!r}")
        self._embed = embed_windows
        self._gallery = gallery
        self._reload_gallery = reload_gallery
        self._enroll_clip = enroll_clip
        self._seen = seen
        self._refresh_gallery = refresh_gallery
        self._gallery_checked = time.monotonic()
        self._resampler = pcm.Resampler(self.sample_rate)
        self._detector = detector if detector is not None else vad.load(self.params.vad_backend)
        self._detector.reset()
        self._frame_s = vad.frame_seconds(self._detector)
        self._window = int(round(self.params.window_s * SR))
        self._hop = int(round(self.params.hop_s * SR))
        self._max_windows = max(1, int(max_held_s / self.params.hop_s))
        cosine = gallery.cosine
        self._cut = (
            self.params.cluster_threshold
            if self.params.cluster_threshold is not None
            else cosine - (timelines.CLUSTER_MARGIN)
        )
        # What the re-clustering merges voices by, as the final timeline's assembly does.
        self._same_voice = (
            self.params.cluster_threshold
            if self.params.cluster_threshold is not None
            else cosine + timelines.SAME_VOICE_MARGIN
        )
        self._reclustered_at = -math.inf  # s of audio: the last re-clustering

        self._n_in = 0  # samples fed, at the input rate
        self._pending: list[np.ndarray] = []  # 16 kHz samples not yet through the VAD
        self._pending_n = 0
        self._n16 = 0  # 16 kHz samples through the VAD
        self._peak = 0.0
        self._audio = np.zeros(0, np.float32)  # 16 kHz samples from _audio_start on
        self._audio_start = 0
        # The VAD's regions, kept up to date from the new frames of each block alone.
        self._found = vad.RegionTracker(frame_s=self._frame_s)
        # Noise: measured in the pauses until judged; kept (the pauses' spectrum only) if noisy.
        self._meter: denoise.NoiseMeter | None = denoise.NoiseMeter(
            vad.frame_samples(self._detector), int(JUDGE_LEVELS_S / self._frame_s)
        )
        self._judging = True  # the noise is still to be judged
        self._holding = True  # the windows of the speech heard wait for that judgement
        self._noisy_db: float | None = None  # speech over pauses (dB) of a session judged noisy
        self._first_speech_s: float | None = None
        self._open_region: vad.Region | None = None  # as the last block left it (at most one is open)
        self._unjudged: list[vad.Region] = []  # settled while the noise was judged: embedded once it is
        self._deferred: list[LiveEvent] = []  # events of a catch-up that enroll() made, for the next feed
        self._settled_until = 0.0  # s: end of the last settled region
        self._speech_from = -1.0  # s: start of the last region a speech event reported

        # Settled speech: regions, window spans (start, end, region index) and vectors, voices.
        self._regions: list[_Region] = []
        self._n_held = 0  # the last regions, settled but their final events held back (RIPE_S)
        self._spans: list[tuple[int, int, int]] = []
        self._vectors: list[np.ndarray] = []
        self._window_voice: list[int] = []
        # Spans of the held windows (settled or open) enrolled already: a window is enrolled once,
        # whichever voice a later re-clustering gives it.
        self._enrolled: set[tuple[int, int]] = set()
        self._dropped_regions = 0  # settled regions whose vectors were let go (memory cap)
        self._dropped_spans = 0
        self._retired = array("d")  # (start, end, voice, score or nan) of dropped regions' segments
        self._speech_s = 0.0
        # Windows of the region still open, by span, in time order: (vector, voice). Its windows
        # are the plan's grid from its start: each block embeds those from _open_next on.
        self._open: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self._open_first = -1  # sample: the start of the open region whose windows these are
        self._open_next = 0  # sample: where its next window starts
        self._open_from_s = 0.0  # s: where its segments not yet final begin (see _let_go_open)
        self._open_let_go = 0  # its first windows given as final segments and let go (the cap)
        self._run: tuple[int, float] | None = None  # (voice, start s) of its latest run of one voice
        self._cut_short = False  # some region's windows were let go while it was open
        self._voices: list[_Voice] = []
        self._unknowns = 0
        self._dirty: set[int] = set()  # voices joined by windows since they were last named
        self._finished = False
        self._closed = False

    # ---- what it has been fed ----------------------------------------------------------------
    @property
    def seconds_fed(self) -> float:
        """Seconds of audio fed so far (the ``at`` of the events)."""
        return self._n_in / self.sample_rate

    # ---- the interface -----------------------------------------------------------------------
    def feed(self, audio_in: bytes | bytearray | memoryview | np.ndarray) -> list[LiveEvent]:
        """Take the next stretch of audio: bytes in the session's encoding, or float32 samples
        (mono, at the session's rate). Returns the events it caused, in order.

        Raises AudioError (nothing taken) for bytes that are not whole samples and for NaN or
        infinite samples; InvalidInputError once the session is closed.
        """
        if self._finished:
            raise InvalidInputError("the live session has ended: it takes no more audio")
        if isinstance(audio_in, np.ndarray):
            samples = pcm.check_samples(audio_in)
        else:
            samples = pcm.decode_pcm(audio_in, self.encoding)
        self._n_in += len(samples)
        resampled = self._resampler.feed(samples)
        if len(resampled):
            self._pending.append(resampled)
            self._pending_n += len(resampled)
        if self._pending_n < int(TICK_S * SR):
            return self._named(self._take_deferred())
        return self._named(self._take_deferred() + self._advance(last=False))

    def finish(self) -> list[LiveEvent]:
        """End the audio: every region settles; returns the last events (final segments).
        :meth:`close` calls it when it has not been called."""
        if self._finished:
            return []
        tail = self._resampler.flush()
        if len(tail):
            self._pending.append(tail)
            self._pending_n += len(tail)
        events = self._named(self._take_deferred() + self._advance(last=True))
        self._finished = True
        return events

    def catch_up(self) -> list[LiveEvent]:
        """Embed now the windows of the speech heard so far that wait for the session to judge
        its noise; the events that gives (none if nothing waited). It judges if the meter can
        tell now; else what waited is embedded as it came and the judging goes on (a verdict on
        too little speech would stand for the whole call). With no whole window waiting (no
        speech yet, or less than a window of it) it does nothing.
        :meth:`enroll` calls it first; a caller that cannot let ``enroll`` embed (the service,
        which enrolls on the lane that embeds) calls it before."""
        r = self._open_region
        waiting = self._unjudged or (r is not None and self._end_sample(r) - self._start_sample(r) >= self._window)
        if not self._holding or self._finished or not waiting:
            return []
        self._judge(self._n16 / SR, now=False)  # a verdict, if the meter can give one now
        self._holding = False  # else what waited is embedded as it came, and the judging goes on
        events: list[LiveEvent] = []
        for r in self._take_unjudged():
            self._settle(r)
        events += self._release(self.seconds_fed, self._heard_to())
        if self._open_region is not None:
            events += self._embed_open(self._open_region, self.seconds_fed)
        return self._named(events)

    def _take_unjudged(self) -> list[vad.Region]:
        regions, self._unjudged = self._unjudged, []
        return regions

    def _take_deferred(self) -> list[LiveEvent]:
        events, self._deferred = self._deferred, []
        return events

    def _named(self, events: list[LiveEvent]) -> list[LiveEvent]:
        """Tell ``seen`` which enrolled speakers the final events named (their last_seen)."""
        if self._seen is not None:
            names = sorted({e.speaker for e in events if isinstance(e, VoiceEvent) and e.final and e.speaker})
            if names:
                self._seen(names)
        return events

    def enroll(self, label: str, name: str, *, add: bool = False) -> EnrolledEvent:
        """Enroll the voice reported as ``label`` (``unknown-2``, or a name for more utterances)
        as speaker ``name`` from the window vectors the session holds of it (no audio is kept).

        ``add`` False: ``name`` must be a new speaker (SpeakerExistsError otherwise); True:
        the vectors are added to ``name`` as one more utterance. Later windows of the voice are
        named ``name`` (as the database keeps it: NFC). Each window is enrolled once, those of a
        turn still open included. InvalidInputError when no held window carries ``label``, or
        every one that does is enrolled already.
        """
        if self._enroll_clip is None:
            raise InvalidInputError("this live session cannot enroll (it was opened without a database)")
        if self._closed:
            raise InvalidInputError("the live session is closed")
        self._deferred += self.catch_up()  # reported with the next feed's events
        name = store.normalize_name(name)  # as the database keeps it, and so as the voice is labelled
        voices = [v for v in range(len(self._voices)) if self._label(v, assign=False) == label]
        rows = [
            (span, vec)
            for span, vec, v in zip(self._spans, self._vectors, self._window_voice)
            if v in voices and span[:2] not in self._enrolled
        ]
        rows += [
            (span + (0,), vec) for span, (vec, v) in self._open.items() if v in voices and span not in self._enrolled
        ]
        if not rows and voices:
            raise InvalidInputError(
                f"the voice labelled {label!r} has no held speech that is not enrolled already: "
                "let it speak again first"
            )
        if not rows:
            heard = sorted(
                {self._label(v, assign=False) for v in set(self._window_voice) | {v for _, v in self._open.values()}}
            )
            raise InvalidInputError(
                f"no voice labelled {label!r} in this session's held speech"
                + (f" (voices: {', '.join(heard)})" if heard else " (no voice heard yet)")
            )
        weights = np.array([(b - a) / SR for (a, b, _), _ in rows])
        vectors = np.stack([v for _, v in rows]).astype(np.float64)
        vector = l2_normalize((vectors * weights[:, None]).sum(axis=0)[None])[0]
        seconds = float(weights.sum())
        digest = hashlib.sha256(b"speakerdb live windows\0" + np.ascontiguousarray(vectors, "<f4").tobytes())
        clip = EmbeddedClip(f"live session, {label}", seconds, digest.hexdigest(), seconds, vector, len(rows))
        self._enroll_clip(name, clip, add)
        self._enrolled.update((a, b) for (a, b, _), _ in rows)
        if self._reload_gallery is not None:
            self._gallery = self._reload_gallery()
        for v in voices:  # named at once: the new centroid is (or holds) this voice's own mean
            self._voices[v].speaker = name
        self._rename(every=True, keep=set(voices))
        return EnrolledEvent(label, name, self.seconds_fed)

    def close(self) -> Timeline:
        """End the session and return its timeline: what ``timeline`` gives for the same audio
        as a file, unless it is noisy (see the module doc, and for sessions past ``max_held_s``)."""
        self.finish()
        self._closed = True
        self._refresh(now=True)  # the final timeline names no one removed since the last check
        duration = self._n16 / SR
        try:
            audio.check_duration_and_level(self._n16, self._peak, SOURCE_LABEL)
        except AudioError as e:
            return Timeline(SOURCE_LABEL, 0.0, [], [], error=e.reason)
        if self._dropped_regions or self._cut_short:
            return self._live_timeline(duration)
        regions = [r.region for r in self._regions]
        if not self._spans:
            note = (
                "no speech found"
                if not regions
                else f"speech found only in bursts shorter than {timelines.MIN_WINDOW_S:g} s"
            )
            return Timeline(SOURCE_LABEL, duration, [], [], self._speech_s, [note])
        vectors = np.stack(self._vectors)
        found = timelines.assemble(
            SOURCE_LABEL, duration, regions, self._spans, vectors, self._gallery, self.params, self._speech_s
        )
        return timelines.noted(found, self._notes())

    def _notes(self) -> list[str]:
        """That the noise was taken out, in a noisy session (as ``timeline`` says of a file)."""
        return [] if self._noisy_db is None else [timelines.noise_note(self._noisy_db)]

    # ---- the work of each block ---------------------------------------------------------------
    def _advance(self, last: bool) -> list[LiveEvent]:
        """Run the pending samples through the VAD; settle, embed and report what they allow."""
        self._refresh(now=last)
        block = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._pending_n = [], 0
        if len(block):
            self._peak = max(self._peak, float(np.max(np.abs(block))))
        self._audio = np.concatenate([self._audio, block])
        self._n16 += len(block)
        probs = [self._detector.feed(block)]
        if last:
            probs.append(self._detector.flush())
        new_probs = np.concatenate(probs)
        self._found.feed(new_probs)  # only the new frames are scanned
        if self._meter is not None:
            self._meter.watch(block, new_probs)
        at = self.seconds_fed
        heard_to = self._heard_to()
        regions = [r for r in self._found.regions(self._n16 / SR) if r.end > self._settled_until]

        events: list[LiveEvent] = []
        for r in regions:
            if r.start > self._speech_from:
                self._speech_from = r.start
                events.append(SpeechEvent(r.start, at))
                if self._first_speech_s is None:
                    self._first_speech_s = r.start
        if self._judging:
            self._judge(heard_to, last)
        settled = [r for i, r in enumerate(regions) if last or i + 1 < len(regions) or r.end <= heard_to - SETTLE_S]
        self._open_region = regions[-1] if len(settled) < len(regions) else None
        if self._holding:  # their windows wait for the judgement, as those of open regions do
            self._unjudged += settled
            self._settled_until = max([self._settled_until] + [r.end for r in settled])
        else:
            for r in self._take_unjudged() + settled:
                self._settle(r)
            events += self._release(at, heard_to, force=last)
        self._found.forget(self._settled_until)
        events += self._bound_memory(at)
        if self._open_region is not None:
            events += self._embed_open(self._open_region, at)

        # What no later block can change is let go: audio no window needs.
        need = [int(round(r.start * SR)) for r in self._unjudged]
        if self._open_region is not None:
            need.append(self._audio_needed(self._open_region))
        need.append(int(max(0.0, heard_to - SETTLE_S - self.params.window_s) * SR))  # regions to come
        keep_from = min(min(need), self._n16)
        if keep_from > self._audio_start:
            self._audio = self._audio[keep_from - self._audio_start :]
            self._audio_start = keep_from
        return events

    def _heard_to(self) -> float:
        """Seconds: the end of the last VAD frame."""
        return self._found.n_frames * self._frame_s

    def _judge(self, heard_to: float, now: bool) -> None:
        """Decide once whether the session is noisy (:meth:`speakerdb.audio.denoise.NoiseMeter.noisy`):
        as soon as its meter can tell, else :data:`JUDGE_WAIT_S` after its first speech, or
        ``now`` (its end, an enrollment). A clean session lets the meter go; a noisy one keeps
        measuring its pauses."""
        assert self._meter is not None
        known = self._meter.snr_db() is not None and self._meter.pauses.power() is not None
        waited = self._first_speech_s is not None and heard_to - self._first_speech_s >= JUDGE_WAIT_S
        if not (known or waited or now):
            return
        self._judging = self._holding = False
        noisy = self._meter.noisy()
        if noisy is None:
            self._meter = None
        else:
            self._noisy_db = noisy[0]
            self._meter.let_levels_go()

    def _samples(self, a: int, b: int) -> np.ndarray:
        if a < self._audio_start or b > self._audio_start + len(self._audio):
            raise AssertionError(f"live session: window {a}-{b} not held ({self._audio_start}+{len(self._audio)})")
        return self._audio[a - self._audio_start : b - self._audio_start].copy()

    @staticmethod
    def _start_sample(r: vad.Region) -> int:
        """The first sample of a region: where its windows' grid starts."""
        return int(round(r.start * SR))

    def _end_sample(self, r: vad.Region) -> int:
        """The last sample of an open region whose audio has arrived."""
        return min(int(round(r.end * SR)), self._n16)

    def _audio_needed(self, r: vad.Region) -> int:
        """The first sample an open region's remaining windows may need."""
        a = self._start_sample(r)
        if self._holding:  # none embedded yet
            return a
        upcoming = self._open_next if self._open_first == a else a
        # The window aligned to the region's end: its end is at least the present end - pad.
        aligned = int(round((r.end - vad.DEFAULT_PAD_S - self._frame_s) * SR)) - self._window
        return max(a, min(upcoming, aligned))

    def _embed_many(self, windows: list[np.ndarray]) -> np.ndarray:
        """Vectors (n, dim) of windows of any lengths: one hook call per length, order kept;
        in a noisy session, of the windows with the noise heard in its pauses so far taken out."""
        if self._noisy_db is not None:
            noise = self._meter.pauses.power() if self._meter is not None else None
            assert noise is not None  # judged noisy: it had MIN_NOISE_FRAMES of pause
            denoiser = denoise.Denoiser(noise)
            windows = [denoiser.samples(w) for w in windows]
        out: list[np.ndarray | None] = [None] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        for idx in by_length.values():
            vectors = np.asarray(self._embed([windows[i] for i in idx]), np.float32)
            if vectors.shape[0] != len(idx) or not np.isfinite(vectors).all():
                raise AudioError(SOURCE_LABEL, "the model produced unusable window vectors")
            for i, v in zip(idx, vectors):
                out[i] = v.copy()  # a row of its own: a held window must not keep its whole batch alive
        return np.stack([v for v in out if v is not None]) if out else np.zeros((0, 1), np.float32)

    def _embed_open(self, r: vad.Region, at: float) -> list[LiveEvent]:
        """Embed the new windows of the open region; a provisional event for its latest voice.
        Nothing while the session is judging its noise (:meth:`_judge`). Only the windows from
        the last one embedded on are looked at, so a block costs the same an hour into a region
        that never pauses as a second into it."""
        if self._holding:
            return []
        a = self._start_sample(r)
        if a != self._open_first:  # a region newly open: its grid starts at its start
            self._open_first, self._open_next, self._open_from_s, self._run = a, a, r.start, None
            self._open_let_go = 0
        new = [(s, s + self._window) for s in range(self._open_next, self._end_sample(r) - self._window + 1, self._hop)]
        if not new:
            return []
        vectors = self._embed_many([self._samples(s, e) for s, e in new])
        for (s, e), vec in zip(new, vectors):
            voice = self._join(vec, (e - s) / SR)
            self._open[(s, e)] = (vec, voice)
            self._extend_run(voice, s, e, a, r)
        self._open_next = new[-1][0] + self._hop
        if self._recluster_due():
            self._recluster()
            self._run = None
            for (s, e), (_, voice) in self._open.items():  # the latest run again, from the windows' new voices
                self._extend_run(voice, s, e, a, r)
        self._rename()
        assert self._run is not None
        voice, start = self._run
        v = self._voices[voice]
        end = new[-1][1] / SR
        return [VoiceEvent(max(start, self._open_from_s), end, self._label(voice), v.speaker, v.score, False, at)]

    def _extend_run(self, voice: int, s: int, e: int, first: int, r: vad.Region) -> None:
        """The open region's latest run of one voice, extended by its window (s, e) of ``voice``
        or begun by it: half a hop before the window's centre, at the region's start for the
        region's first window (``first``)."""
        if self._run is None or self._run[0] != voice:
            self._run = (voice, r.start if s == first else (s + e) / 2 / SR - self.params.hop_s / 2)

    def _settle(self, r: vad.Region) -> None:
        """A region that can no longer change: its windows and their voices, its final segments
        held until :meth:`_release` gives them."""
        index = self._dropped_regions + len(self._regions)
        spans = timelines.plan_windows([r], self.params.window_s, self.params.hop_s)
        start_s = r.start
        if self._start_sample(r) == self._open_first:  # the open region: what it held is used
            start_s = self._open_from_s
            if self._open_let_go:  # its first windows are final segments already (the cap)
                kept_from = self._open_first + self._open_let_go * self._hop
                spans = [span for span in spans if span[0] >= kept_from]
            self._open_first, self._open_let_go, self._run = -1, 0, None
        self._settled_until = r.end
        self._speech_s += r.duration
        entry = _Region(r, len(self._spans), len(spans), start_s)
        self._regions.append(entry)
        self._n_held += 1
        end = int(round(r.end * SR))
        if not spans:
            self._drop_open_before(end)
            return
        missing = [(a, b) for a, b, _ in spans if (a, b) not in self._open]
        fresh = dict(zip(missing, self._embed_many([self._samples(a, b) for a, b in missing])))
        voices = []
        for a, b, _ in spans:
            if (a, b) in self._open:
                vec, voice = self._open.pop((a, b))
            else:
                vec = fresh[(a, b)]
                voice = self._join(vec, (b - a) / SR)
            self._spans.append((a, b, index))
            self._vectors.append(vec)
            self._window_voice.append(voice)
            voices.append(voice)
        self._drop_open_before(end)
        if self._recluster_due():
            self._recluster()
            voices = self._window_voice[len(self._window_voice) - len(spans) :]
        self._rename()

    def _release(self, at: float, heard_to: float, force: bool = False) -> list[LiveEvent]:
        """The final events of the held regions, in order, up to the first that must wait: one
        with a voice that is unnamed and has less than :data:`RIPE_S` of speech, unless it ended
        :data:`HOLD_MAX_S` before ``heard_to`` or ``force``. Each region's windows are smoothed
        with the voices they have now (a re-clustering may have joined a young voice to another)."""
        if not self._n_held:
            return []
        speech = (
            np.bincount(
                np.array(self._window_voice + [v for _, v in self._open.values()], np.int64),
                minlength=len(self._voices),
            )
            * self.params.hop_s
        )
        events: list[LiveEvent] = []
        while self._n_held:
            entry = self._regions[len(self._regions) - self._n_held]
            i, n = entry.first_span, entry.n_spans
            segments = []
            if n:
                spans = self._spans[i : i + n]
                voices = self._window_voice[i : i + n]
                segments = self._smooth(
                    entry.start_s, entry.region.end, spans, voices, np.stack(self._vectors[i : i + n])
                )
            young = any(self._voices[v].speaker is None and speech[v] < RIPE_S for _, _, v, _ in segments)
            if young and not force and entry.region.end > heard_to - HOLD_MAX_S:
                break
            entry.segments = segments
            self._n_held -= 1
            events += [
                VoiceEvent(s, e, self._label(v), self._voices[v].speaker, score, True, at)
                for s, e, v, score in segments
            ]
        return events

    def _smooth(
        self,
        start_s: float,
        end_s: float,
        spans: Sequence[tuple[int, int, int]],
        voices: list[int],
        vectors: np.ndarray,
        upto: int | None = None,
    ) -> list[tuple[float, float, int, float | None]]:
        """The segments of a stretch of a region's windows (``start_s``-``end_s``): their voices
        smoothed as ``timeline`` smooths frames (Viterbi with the switch penalty, short runs merged),
        one hop of frames per window. ``upto``: the segments of the first ``upto`` windows only,
        the last ending halfway between the centres of window ``upto - 1`` and the next."""
        present = sorted(set(voices))
        profiles = np.stack([self._voices[v].profile for v in present]).astype(np.float32)
        frames = self.params.hop_s / timelines.FRAME_S  # frames each window stands for
        scores = (vectors @ profiles.T).astype(np.float64) * frames  # (n, V)
        path = timelines.viterbi(scores, self.params.switch_penalty)
        lengths = np.full(len(spans), max(1, int(round(frames))))
        path = timelines.merge_short(path, scores, int(round(self.params.min_segment_s / timelines.FRAME_S)), lengths)
        last = len(spans) if upto is None else upto
        out = []
        centres = [(a + b) / 2 / SR for a, b, _ in spans]
        for i, j, k in timelines.runs(path[:last]):
            start = start_s if i == 0 else (centres[i - 1] + centres[i]) / 2
            end = end_s if j == len(spans) else (centres[j - 1] + centres[j]) / 2
            out.append((start, end, present[k], self._voices[present[k]].score))
        return out

    def _drop_open_before(self, end: int) -> None:
        """Forget the open windows of a region that has settled (those its final plan left out:
        past its end, when the next region clipped its padding)."""
        for key in [k for k in self._open if k[0] < end]:
            del self._open[key]

    # ---- voices ---------------------------------------------------------------------------------
    def _join(self, vector: np.ndarray, seconds: float) -> int:
        """The voice a window vector belongs to (a new one if it is close to none); its sums updated.
        Voices a re-clustering emptied are passed over."""
        unit = l2_normalize(vector[None])[0].astype(np.float64)
        best = -1
        if self._voices:
            sims = np.array([float(unit @ v.profile) if v.weight > 0 else -np.inf for v in self._voices])
            best = int(np.argmax(sims))
            if sims[best] < self._cut and len(self._voices) < MAX_VOICES:
                best = -1
        if best < 0:
            self._voices.append(_Voice(np.zeros_like(unit), 0.0))
            best = len(self._voices) - 1
        v = self._voices[best]
        v.total += seconds * unit
        v.weight += seconds
        self._dirty.add(best)
        return best

    def _let_go(self, voice: int, vector: np.ndarray, seconds: float) -> None:
        """A window of ``voice`` is let go (the memory cap): its part of the voice's sums stays."""
        v = self._voices[voice]
        unit = l2_normalize(vector[None])[0].astype(np.float64)
        v.gone = seconds * unit if v.gone is None else v.gone + seconds * unit
        v.gone_weight += seconds

    def _checked(self, new: np.ndarray, old: np.ndarray, units: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The re-clustering's voices ``new`` of the windows (weighted unit vectors ``units``),
        held to the live ones ``old`` by the gallery's threshold on the cosine of their means: a live
        voice is split only where its parts score below it against each other, and it is merged
        into another only where their windows reach it (on the first seconds of a call, with few
        windows, the clustering alone both split one voice and merged away a new one)."""
        threshold = self._gallery.cosine
        new = new.copy()

        def alike(a: np.ndarray, b: np.ndarray) -> float:
            return float(l2_normalize(units[a].sum(axis=0)[None])[0] @ l2_normalize(units[b].sum(axis=0)[None])[0])

        for v in np.unique(old).tolist():
            mine = old == v
            parts = np.unique(new[mine]).tolist()
            main = max(parts, key=lambda p: (float(weights[mine & (new == p)].sum()), -p))
            for p in parts:
                if p != main and alike(mine & (new == p), mine & (new == main)) >= threshold:
                    new[mine & (new == p)] = main
            if v not in new:  # merged away whole: kept where it is not like the voice it joined
                for p in np.unique(new[mine]).tolist():
                    rest = (new == p) & ~mine
                    if rest.any() and alike(mine & (new == p), rest) < threshold:
                        new[mine & (new == p)] = v
        return new

    def _recluster_due(self) -> bool:
        """Whether the voices are to be clustered again now (see RECLUSTER_S, RECLUSTER_ITEMS)."""
        items = min(len(self._vectors) + len(self._open), RECLUSTER_MAX_ITEMS)
        wait = RECLUSTER_S * max(1.0, items / RECLUSTER_ITEMS) ** 3
        return items >= clustering.MIN_ITEMS and self._n16 / SR - self._reclustered_at >= wait

    def _recluster(self) -> None:
        """Cluster the held windows (settled and open) again with ``timeline``'s clustering of a
        recording (:func:`speakerdb.clustering.voices`, as the final timeline's assembly calls it)
        and give each window the voice of its cluster: each cluster is the live voice holding most
        of its windows (by seconds; the clusters that share most with a voice first, one cluster a
        voice), or a new voice when every voice it shares windows with went to another. A voice left
        with no window keeps its label, unused. The voices' sums and names are taken again."""
        self._reclustered_at = self._n16 / SR
        open_items = list(self._open.items())
        spans = [(a, b) for a, b, _ in self._spans] + [span for span, _ in open_items]
        vectors = np.stack(self._vectors + [vec for _, (vec, _) in open_items]).astype(np.float64)
        old = np.array(self._window_voice + [v for _, (_, v) in open_items], np.int64)
        weights = np.array([(b - a) / SR for a, b in spans])
        clusters = timelines.cluster_voices(
            vectors, self.params, self._same_voice, weights, max_items=RECLUSTER_MAX_ITEMS
        )
        k = int(clusters.max()) + 1
        shared = np.zeros((k, len(self._voices)))
        np.add.at(shared, (clusters, old), weights)
        voice_of: dict[int, int] = {}
        taken: set[int] = set()
        for c, v in sorted(zip(*np.nonzero(shared)), key=lambda cv: (-shared[cv], cv[0], cv[1])):
            if int(c) not in voice_of and int(v) not in taken:
                voice_of[int(c)] = int(v)
                taken.add(int(v))
        for c in range(k):  # a cluster left over: a new voice (-1 - c until it is made, if it still is)
            voice_of.setdefault(c, -1 - c if len(self._voices) < MAX_VOICES else int(np.argmax(shared[c])))
        units = l2_normalize(vectors) * weights[:, None]
        new = self._checked(np.array([voice_of[int(c)] for c in clusters], np.int64), old, units, weights)
        for c in sorted({int(v) for v in new if v < 0}, reverse=True):
            self._voices.append(_Voice(np.zeros(vectors.shape[1]), 0.0))
            new[new == c] = len(self._voices) - 1
        if np.array_equal(new, old):
            return
        for i, v in enumerate(self._voices):
            mine = new == i
            v.total = units[mine].sum(axis=0) + (0.0 if v.gone is None else v.gone)
            v.weight = float(weights[mine].sum()) + v.gone_weight
        n_held = len(self._vectors)
        self._window_voice = new[:n_held].tolist()
        for (span, (vec, _)), v in zip(open_items, new[n_held:].tolist()):
            self._open[span] = (vec, v)
        self._dirty.update(range(len(self._voices)))

    def _refresh(self, now: bool = False) -> None:
        """Take the database's gallery again if it changed (checked at most every
        ``GALLERY_CHECK_S``, or ``now``), and name every voice from it: a voice whose speaker was
        removed is unknown from then on."""
        if self._refresh_gallery is None or not (now or time.monotonic() - self._gallery_checked >= GALLERY_CHECK_S):
            return
        self._gallery_checked = time.monotonic()
        gallery = self._refresh_gallery()
        if gallery is not None:
            self._gallery = gallery
            if self._voices:
                self._rename(every=True)

    def _rename(self, every: bool = False, keep: frozenset[int] | set[int] = frozenset()) -> None:
        """Name the voices whose windows changed (``every``: all of them) from the gallery by their
        mean vectors, as ``timeline`` names a voice; those in ``keep`` keep their name."""
        which = sorted(i for i in (range(len(self._voices)) if every else self._dirty) if self._voices[i].weight > 0)
        self._dirty.clear()
        if not which:
            return
        profiles = np.stack([self._voices[i].profile for i in which]).astype(np.float32)
        for i, (name, score, _, _, _) in zip(which, timelines._name(profiles, self._gallery)):
            if i not in keep:
                self._voices[i].speaker = name
            self._voices[i].score = score

    def _label(self, voice: int, assign: bool = True) -> str:
        """A voice's label: its enrolled name, else unknown-N (N given the first time it is reported)."""
        v = self._voices[voice]
        if v.speaker is not None:
            return v.speaker
        if v.number == 0 and assign:
            self._unknowns += 1
            v.number = self._unknowns
        return f"unknown-{v.number}" if v.number else "unknown-?"

    # ---- memory -------------------------------------------------------------------------------
    def _bound_memory(self, at: float) -> list[LiveEvent]:
        """Past ``max_held_s`` of windows (settled and open), the oldest settled regions give up
        their vectors and keep only their final segments (compactly); past it in the open region
        alone, its oldest windows are made final (:meth:`_let_go_open`). The events that gives
        (the held regions' first: every region let go has given its final segments)."""
        events: list[LiveEvent] = []
        if len(self._spans) + len(self._open) > self._max_windows:
            events = self._release(at, self._heard_to(), force=True)
        while len(self._spans) + len(self._open) > self._max_windows and (
            len(self._regions) > 1 or (self._regions and self._open)
        ):
            entry = self._regions.pop(0)
            for s, e, v, score in entry.segments:
                self._retired.extend((s, e, float(v), math.nan if score is None else score))
            n = entry.n_spans
            for (a, b, _), vec, v in zip(self._spans[:n], self._vectors[:n], self._window_voice[:n]):
                self._enrolled.discard((a, b))
                self._let_go(v, vec, (b - a) / SR)
            del self._spans[:n], self._vectors[:n], self._window_voice[:n]
            self._dropped_spans += n
            self._dropped_regions += 1
            for r in self._regions:
                r.first_span -= n
        if len(self._open) > self._max_windows:  # every settled region is let go by now
            step = max(1, min(self._max_windows // 4, int(LET_GO_S / self.params.hop_s)))
            # Never its newest window: the end of the region's final plan may yet leave it out.
            return events + self._let_go_open(min(len(self._open) - 1, len(self._open) - self._max_windows + step), at)
        return events

    def _let_go_open(self, n: int, at: float) -> list[LiveEvent]:
        """Make final the oldest ``n`` windows of the open region: their segments are smoothed with
        the next :data:`LOOK_AHEAD_S` of windows as look-ahead, reported as final events and kept
        (as a dropped region's are), their vectors let go. The session's final timeline is then
        its final segments (:meth:`_live_timeline`); enrollment takes the windows kept."""
        items = list(itertools.islice(self._open.items(), n + max(1, int(LOOK_AHEAD_S / self.params.hop_s))))
        spans = [(a, b, 0) for (a, b), _ in items]
        voices = [voice for _, (_, voice) in items]
        vectors = np.stack([vec for _, (vec, _) in items])
        # No segment reaches the region's end (upto < len), so that end is not needed.
        segments = self._smooth(self._open_from_s, math.nan, spans, voices, vectors, upto=n)
        for s, e, v, score in segments:
            self._retired.extend((s, e, float(v), math.nan if score is None else score))
        for span, (vec, v) in items[:n]:
            del self._open[span]
            self._enrolled.discard(span)
            self._let_go(v, vec, (span[1] - span[0]) / SR)
        self._open_let_go += n
        self._open_from_s = segments[-1][1]
        self._cut_short = True
        return [
            VoiceEvent(s, e, self._label(v), self._voices[v].speaker, score, True, at) for s, e, v, score in segments
        ]

    def _live_timeline(self, duration: float) -> Timeline:
        """The final timeline from the final segments (a session past ``max_held_s``)."""
        rows = [tuple(self._retired[i : i + 4]) for i in range(0, len(self._retired), 4)]
        rows += [(s, e, float(v), math.nan if sc is None else sc) for r in self._regions for s, e, v, sc in r.segments]
        merged: list[list[float]] = []
        for s, e, v, sc in rows:
            if merged and merged[-1][2] == v and s - merged[-1][1] < self.params.merge_gap_s:
                merged[-1][1] = e
            else:
                merged.append([s, e, v, sc])
        segments = []
        for s, e, v, sc in merged:
            voice = self._voices[int(v)]
            label = self._label(int(v))
            segments.append(Segment(s, e, label, voice.speaker, None if math.isnan(sc) else sc))
        seconds: dict[str, float] = {}
        first: dict[str, int] = {}
        for seg, (_, _, v, _) in zip(segments, merged):
            seconds[seg.label] = seconds.get(seg.label, 0.0) + seg.end - seg.start
            first.setdefault(seg.label, int(v))
        voices = [Voice(lab, self._voices[v].speaker, seconds[lab], self._voices[v].score) for lab, v in first.items()]
        voices.sort(key=lambda x: -x.seconds)
        note = (
            f"a live session longer than its {self.params.hop_s * self._max_windows:g} s of held speech: "
            "the timeline is the session's final segments, not a re-assembly of the whole"
        )
        return Timeline(SOURCE_LABEL, duration, segments, voices, self._speech_s, [*self._notes(), note])
