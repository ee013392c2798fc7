"""Analysis: who speaks when (timeline), how accurate the database is on your recordings
(evaluate), the threshold that goes with them (calibrate, threshold) and score
normalisation (norm)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..config import DEFAULT_TOP_N, SEGMENTATION_ENV, db_target
from ..errors import DatabaseError
from ..results import MAX_SPEAKERS, Params, Timeline
from .output import (
    emit,
    emit_line,
    fail_files,
    json_option,
    jsonl_option,
    note,
    one_of_json_options,
    print_line,
    printable,
    progress,
    stages,
    threshold_text,
    timeline_text,
)
from .params import (
    SCORE,
    THRESHOLD_HELP,
    check_outputs,
    check_score,
    check_target,
    evaluation_options,
    recordings,
)

if TYPE_CHECKING:
    from ..api import Report
    from . import State


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--threshold", type=SCORE, help=THRESHOLD_HELP)
@click.option("--rttm", "rttm_path", type=click.Path(dir_okay=False), help="Also write the segments to this RTTM file.")
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw one lane per voice over time into this PNG."
)
@click.option(
    "--window", type=click.FloatRange(0.5, 30), default=1.5, show_default=True, help="Window length, seconds."
)
@click.option("--hop", type=click.FloatRange(0.05, 30), default=0.5, show_default=True, help="Window hop, seconds.")
@click.option(
    "--min-segment",
    type=click.FloatRange(0, 60),
    default=1.0,
    show_default=True,
    help="Shorter segments join their neighbour, seconds.",
)
@click.option(
    "--speakers",
    type=click.IntRange(1, MAX_SPEAKERS),
    help="How many voices the recording holds, when you know (default: found from the recording).",
)
@click.option("--min-speakers", type=click.IntRange(1, MAX_SPEAKERS), help="At least this many voices.")
@click.option("--max-speakers", type=click.IntRange(1, MAX_SPEAKERS), help="At most this many voices.")
@click.option(
    "--segmentation",
    metavar="PATH|ID",
    envvar=SEGMENTATION_ENV,
    help="Speaker segmentation model (pyannote segmentation-3.0 checkpoint file, or its Hugging Face id "
    f"from the local cache): finds speech, speaker changes and overlapping speech [env {SEGMENTATION_ENV}].",
)
@click.option("--force", is_flag=True, help="Replace the --rttm and --plot files if they exist.")
@json_option
@jsonl_option
@click.pass_obj
def timeline(
    state: State,
    files: tuple[str, ...],
    threshold: float | None,
    rttm_path: str | None,
    plot_path: str | None,
    window: float,
    hop: float,
    min_segment: float,
    as_json: bool,
    speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    force: bool = False,
    as_jsonl: bool = False,
    segmentation: str | None = None,
) -> None:
    """Who speaks when: segments of each voice in each recording (a folder: every recording
    below it), named from the enrolled speakers when a voice reaches the threshold, else
    unknown-1, unknown-2...

    Finds the speech (Silero VAD), embeds windows of it, groups them into voices (how many
    is found from the recording itself, or set with --speakers / --min-speakers /
    --max-speakers) and names each voice. With no speakers enrolled every voice is
    unknown-N; with no database at all (none at the default place: a --db that names none is
    an error) it diarizes with --model (default: the default model, said on stderr) and
    writes no database. Without --segmentation, one voice per
    instant: where two people overlap, the louder one gets the time. With a segmentation
    model (pyannote segmentation-3.0, MIT; `speakerdb model download pyannote/segmentation-3.0`
    on a connected machine) it finds the speech and the speaker turns, and two voices where
    two speak at once (segments may then overlap); stderr says which is used. Names are decided as
    identify decides them: with normalisation on (speakerdb norm), "score" is the AS-norm
    score and "raw_score" the cosine. With --json, prints [{"file", "duration", "segments":
    [{"start", "end", "label", "speaker", "score", "raw_score"}], "voices": [{"label",
    "speaker", "seconds", "score", "raw_score"}], "notes"}]. As with identify,
    every file gets its timeline or {"file", "error"}, and the exit code is 1 if any file failed.
    Each file is printed as soon as it is done (--jsonl: as one JSON line; --json prints one
    list at the end); at a terminal a progress bar on stderr shows the files, seconds of
    audio, rate and time left.

    \b
    Examples:
      speakerdb timeline meeting.wav
      speakerdb timeline calls/ --json
      speakerdb timeline call.wav --rttm call.rttm --plot call.png
      speakerdb timeline interview.wav --speakers 2
      speakerdb --model resemblyzer timeline meeting.wav   # no database needed
      speakerdb timeline meeting.wav --segmentation segmentation-3.0/pytorch_model.bin
    """
    if hop > window:
        raise click.BadParameter(f"the hop ({hop:g} s) must not exceed the window ({window:g} s)", param_hint="--hop")
    files = recordings(files)  # a folder: the recordings below it, as enroll takes them
    if speakers is not None and (min_speakers is not None or max_speakers is not None):
        raise click.BadParameter("give --speakers or --min-speakers/--max-speakers, not both", param_hint="--speakers")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise click.BadParameter(
            f"--min-speakers ({min_speakers}) exceeds --max-speakers ({max_speakers})", param_hint="--min-speakers"
        )
    check_score(state, threshold)  # with or without a database: a cosine in [0, 1] unless it is AS-norm's
    params = Params(
        window_s=window,
        hop_s=hop,
        min_segment_s=min_segment,
        speakers=speakers,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
        segmentation=None if state.server else segmentation or None,
    )
    standalone = not state.exists()  # no database: plain diarization, nothing written
    if standalone and state.db_path:  # a database named and not there is a typo, as for every other command
        raise DatabaseError(
            f"no database at {db_target(state.db_path)}: check --db (or SPEAKERDB_DB); "
            "without them, timeline diarizes with no database"
        )
    check_outputs(force, rttm_path, plot_path)  # before minutes of work, not after
    if rttm_path:
        _check_rttm_ids(files)
    if plot_path:
        from ..api import (  # deferred: keeps numpy and SQLAlchemy out of light imports (--help)
            check_plotting,  # numpy: loaded when a command runs, not for --help
        )

        check_plotting()
    one_of_json_options(as_json, as_jsonl)
    if params.segmentation:  # missing, not in the cache or no checkpoint: its error line alone, no notes first
        from ..workflows import check_segmentation  # deferred: numpy and the database, not for --help

        check_segmentation(params.segmentation)
    if state.server:
        if segmentation:
            note("note:", "--segmentation", "not sent: the service uses its own (SPEAKERDB_SEGMENTATION where it runs)")
    elif segmentation:
        note("note:", f"segmentation model {segmentation}", "speech, speaker turns and overlapping speech from it")
    else:
        note("note:", "no segmentation model (--segmentation)", "one voice at a time, overlapping speech not detected")

    def show(t: Timeline) -> None:
        # Each file as it is done: its notes on stderr, its lines (or JSON line) on stdout.
        for text in t.notes:
            note("note:", t.file, text)
        if as_jsonl:
            emit_line(t.to_dict())
        elif t.error is None:
            print_line(timeline_text(t, printable(t.file)))

    with progress("timeline", len(files)) as bar:
        if standalone:
            from ..workflows import diarize  # numpy and the model: not for --help

            where = db_target(state.db_path)
            results = diarize(
                list(files),
                model=state.model,
                device=state.device,
                precision=state.precision,
                threshold=threshold,
                params=params,
                progress=bar,
                on_result=None if as_json else show,
                announce=lambda model: note("note:", f"no database at {where}", f"diarizing with model {model}"),
            )
        else:
            results = state.db.timeline(
                list(files), threshold=threshold, params=params, progress=bar, on_result=None if as_json else show
            )
    failed = [t for t in results if t.error is not None]
    results_ok = [t for t in results if t.error is None]
    if results_ok and (rttm_path or plot_path):
        from ..workflows import write_timeline_files  # numpy (and matplotlib for --plot)

        write_timeline_files(results_ok, rttm=rttm_path, plot=plot_path, overwrite=force)
    if as_json:
        for t in results:
            for text in t.notes:
                note("note:", t.file, text)
        emit(True, [t.to_dict() for t in results], "")
    elif not as_jsonl:
        if rttm_path and results_ok:
            print_line(f"rttm: {rttm_path}")
        if plot_path and results_ok:
            print_line(f"plot: {plot_path}")
    fail_files(failed)


def _check_rttm_ids(files: tuple[str, ...]) -> None:
    """A usage error for two inputs whose RTTM lines would carry one recording id: a scorer
    would take them for one recording."""
    from ..workflows import rttm_clash  # numpy: loaded when a command runs, not for --help

    clash = rttm_clash(files)
    if clash is not None:
        first, second, uri = clash
        raise click.UsageError(
            f"{printable(first)} and {printable(second)} would both be recording {uri!r} in the "
            "--rttm file: rename one, or write each to its own --rttm file"
        )


@click.command()
@evaluation_options
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="Write score histograms and a DET curve to this PNG."
)
@click.option("--force", is_flag=True, help="Replace the --plot file if it exists.")
@click.option(
    "--norm",
    "norm_method",
    type=click.Choice(["none", "as-norm"]),
    default="none",
    show_default=True,
    help="Also report every figure with adaptive s-norm against --cohort, side by side with the raw ones.",
)
@click.option(
    "--cohort",
    "cohort_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Recordings of people who are neither enrolled nor probes (needed by --norm as-norm).",
)
@click.option(
    "--top-n",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Highest cohort scores averaged per side by --norm as-norm.",
)
@json_option
@click.pass_obj
def evaluate(
    state: State,
    data_dir: str,
    plot_path: str | None,
    norm_method: str,
    cohort_dir: str | None,
    top_n: int,
    as_json: bool,
    force: bool = False,
    **split_options: Any,
) -> None:
    """Measure accuracy on your own labelled recordings, DATA_DIR/<speaker>/<files>.

    Enrolls part of each speaker's recordings in a temporary database (yours is never
    touched), holds some speakers out as impostors, scores the rest and reports
    closed-set top-1/top-5 accuracy, EER (at the threshold `speakerdb calibrate --target
    eer` gives), minDCF (P_target 0.01, 0.05), and the open-set
    detection-and-identification rate at false-alarm rates 1% and 10%.

    \b
    Examples:
      speakerdb evaluate recordings/
      speakerdb --model resemblyzer evaluate test-other/ --impostors train-clean-100/ --plot report.png
      speakerdb evaluate recordings/ --test-seconds 3 --seed 1 --json
      speakerdb evaluate test-other/ --norm as-norm --cohort train-clean-100/ --top-n 100
    """
    state.local_only("evaluate")
    if (norm_method == "as-norm") != (cohort_dir is not None):
        raise click.UsageError("--norm as-norm and --cohort DIR go together")
    from ..workflows import (  # deferred: keeps numpy and SQLAlchemy out of light imports (--help)
        evaluate_recordings,  # numpy and the model: loaded when the command runs
    )

    with stages(as_json) as update:
        report = evaluate_recordings(
            data_dir,
            **state.local_options(),
            cohort=cohort_dir,
            top_n=top_n,
            plot=plot_path,
            overwrite=force,
            progress=update,
            **split_options,
        )
    text = format_report(report) + (f"\nplot: {plot_path}" if plot_path else "")
    emit(as_json, report.to_dict(), text)


@click.command()
@evaluation_options
@click.option(
    "--target",
    default="eer",
    show_default=True,
    metavar="eer|far=RATE",
    callback=check_target,
    help="Operating point: the equal-error-rate threshold, or the lowest threshold whose "
    "false-acceptance rate is at most RATE.",
)
@click.option("--apply", is_flag=True, help="Store the threshold in the database (--db).")
@json_option
@click.pass_obj
def calibrate(state: State, data_dir: str, target: str, apply: bool, as_json: bool, **split_options: Any) -> None:
    """Choose the decision threshold from your own labelled recordings.

    Runs the same scoring as `speakerdb evaluate`, then prints the threshold for the
    chosen operating point with the miss and false-acceptance rates expected there:
    the midpoint between the two observed scores that straddle it. On a database with
    score normalisation (`speakerdb norm`) the scores are normalised with its cohort and
    the threshold is on that scale. --apply stores it in the database, which must use
    the same model.

    \b
    Examples:
      speakerdb calibrate recordings/ --target eer
      speakerdb calibrate recordings/ --target far=0.01 --apply
    """
    state.local_only("calibrate")
    from ..workflows import (  # deferred: keeps numpy and SQLAlchemy out of light imports (--help)
        calibrate_threshold,  # numpy and the model: loaded when the command runs
    )

    with stages(as_json) as update:
        c = calibrate_threshold(
            data_dir, target, **state.local_options(), apply=apply, progress=update, **split_options
        )
    scale = " on the as-norm scale" if c.threshold_scale != "cosine" else ""
    text = (
        f"threshold for {target}: {threshold_text(c.threshold)}{scale} "
        f"(expected miss rate {c.p_miss:.2%}, false acceptance {c.p_fa:.2%}, "
        f"on {c.report.n_target_trials} target / {c.report.n_nontarget_trials} non-target trials)"
        + (f"\nstored in {c.database}" if apply else "\nnot stored: add --apply to use it")
    )
    emit(as_json, c.to_dict(), text)


@click.command(name="norm")
@click.option(
    "--cohort",
    "cohort_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Recordings of people who are NOT enrolled; their embeddings (never the audio) are stored.",
)
@click.option(
    "--top-n",
    type=click.IntRange(min=1),
    default=None,
    help=f"Highest cohort scores averaged per side [default: {DEFAULT_TOP_N}, at most the cohort's size].",
)
@click.option("--off", is_flag=True, help="Return to raw cosine scores and delete the cohort's embeddings.")
@json_option
@click.pass_obj
def norm_(state: State, cohort_dir: str | None, top_n: int | None, off: bool, as_json: bool) -> None:
    """Show, turn on or turn off score normalisation (adaptive s-norm, AS-norm).

    With a cohort, every score identify, verify and calibrate compare with the threshold
    is normalised against the voices of the cohort nearest to each side; the JSON gives
    "score" (normalised) and "raw_score" (cosine). Normalised scores are on another scale:
    switching normalisation on resets the threshold to 3 on the AS-norm scale, and off
    restores the cosine threshold from before; calibrate it again (`speakerdb calibrate
    DATA_DIR --apply`). A cohort is embedded
    with the database's model; one of another model is refused.

    \b
    Examples:
      speakerdb norm
      speakerdb norm --cohort cohort-recordings/ --top-n 100
      speakerdb norm --off
      speakerdb --server http://10.0.0.5:8000 norm --cohort cohort/   # uploaded; an admin key
    """
    if off and (cohort_dir or top_n is not None):
        raise click.UsageError("--off takes neither --cohort nor --top-n")
    if top_n is not None and not cohort_dir:
        raise click.UsageError("--top-n needs --cohort DIR (the statistics are computed when the cohort is stored)")
    if cohort_dir:
        state.allow_create()  # a cohort may come before the first speaker: it binds the model
        # No --top-n: the library's default, 100 or the cohort's size if smaller (after any set aside).
        with stages(as_json) as update:  # a few hundred recordings: half a minute or more
            change = state.db.set_norm(
                cohort_dir, top_n=top_n, progress=lambda done, total, _s: update("embedding the cohort", done, total)
            )
    elif off:
        change = state.db.set_norm_off()
    else:
        current = state.db.norm_settings
        doc = {
            "norm": current.to_dict() if current else None,
            "threshold": state.db.threshold,
            "threshold_scale": state.db.threshold_scale,
        }
        text = (
            f"AS-norm: top {current.top_n} of {current.count} cohort recordings ({current.model_id})"
            if current
            else "no score normalisation: raw cosine scores"
        ) + f"\nthreshold: {doc['threshold']:g} ({doc['threshold_scale']} scale)"
        emit(as_json, doc, text)
        return
    n = change.norm
    text = f"AS-norm on: top {n.top_n} of {n.count} cohort recordings" if n else "normalisation off: raw cosine scores"
    if change.set_aside:  # each was named in a warning as it was set aside
        text += f" ({len(change.set_aside)} set aside: they score as enrolled speakers)"
    if change.recalibrate:
        text += (
            f"\nthreshold reset to {change.threshold:g} on the {change.threshold_scale} scale: "
            "calibrate it again (speakerdb calibrate DATA_DIR --apply)"
        )
        click.echo(
            f"warning: the threshold is now on the {change.threshold_scale} scale: run `speakerdb calibrate` again",
            err=True,
        )
    emit(as_json, change.to_dict(), text)


@click.command()
@click.argument("value", required=False, type=SCORE)
@json_option
@click.pass_obj
def threshold(state: State, value: float | None, as_json: bool) -> None:
    """Show the decision threshold, or store VALUE as the new one.

    A cosine score at or above the threshold names the speaker (identify) or accepts
    the claim (verify). New databases start at 0.86, the model card's suggestion for
    wavlm-base-plus-sv; the right value depends on your recordings. With score
    normalisation on (`speakerdb norm`) the threshold is an AS-norm score (-20 to 100).

    \b
    Examples:
      speakerdb threshold
      speakerdb threshold 0.8
    """
    check_score(state, value, name="value")
    if value is not None:
        state.db.set_threshold(value)
    current = state.db.threshold
    scale = state.db.threshold_scale
    emit(
        as_json, {"threshold": current}, f"threshold: {current:g}" + ("" if scale == "cosine" else f" ({scale} scale)")
    )


# ---- evaluate's report -------------------------------------------------------------------------
def format_report(r: Report) -> str:
    """The evaluation's figures as text: raw scores, and AS-norm beside them when measured."""
    head = [
        (
            f"speakers: {r.n_enrolled_speakers} enrolled ({r.n_enroll_recordings} recordings), "
            f"{r.n_impostor_speakers} impostor speakers"
        ),
        (
            f"probes: {r.n_probes} genuine, {r.n_impostor_probes} impostor; "
            f"trials: {r.n_target_trials} target, {r.n_nontarget_trials} non-target"
        ),
    ]
    if r.normalised is None:
        return "\n".join(head + [_format_figures(r.__dict__)])
    top_n = (r.settings.get("norm") or {}).get("top_n")
    raw = _format_figures(r.__dict__).splitlines()
    normed = _format_figures(r.normalised).splitlines()
    width = max(len(line) for line in raw)
    lines = head + [
        f"{'raw cosine scores':<{width}}  |  AS-norm, top {top_n} of {r.settings['norm']['cohort_count']} cohort"
    ]
    lines += [f"{a:<{width}}  |  {b}" for a, b in zip(raw, normed)]
    return "\n".join(lines)


def _format_figures(r: dict[str, Any]) -> str:
    """The figures of one scale (a Report's fields, or its ``normalised`` dict)."""
    lines = [
        f"closed-set identification: top-1 {r['top1']:.1%}, top-5 {r['top5']:.1%}",
        f"EER: {r['eer']:.2%} at threshold {r['eer_threshold']:.3f}",
    ]
    for p, v in r["min_dcf"].items():
        lines.append(f"minDCF (P_target {p}): {v['min_dcf']:.3f} at threshold {threshold_text(v['threshold'])}")
    for far, v in r["dir"].items():
        lines.append(
            f"open-set DIR at rank 1, FAR {float(far):.0%}: {v['dir']:.1%} "
            f"at threshold {threshold_text(v['threshold'])}"
        )
    if not r["dir"]:
        lines.append("open-set DIR: no impostor recordings (use --impostor-speakers or --impostors)")
    return "\n".join(lines)


COMMANDS = [timeline, evaluate, calibrate, norm_, threshold]
