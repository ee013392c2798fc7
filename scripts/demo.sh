#!/usr/bin/env bash
# speakerdb end to end: synthesise three voices with espeak-ng, enroll them, then identify
# and verify sentences the database has never heard.
#
#     scripts/demo.sh                      # inside the activated virtualenv, from any directory
#     DEMO_DIR=./demo scripts/demo.sh      # keep the audio, database and model it makes
#     SPEAKERDB_MODEL=./wavlm-base-plus-sv scripts/demo.sh   # real weights copied from elsewhere
#
# Everything goes to a work directory (DEMO_DIR, default: a new temporary one) with a fresh
# database of its own: your default speakerdb database is never touched. When the model
# microsoft/wavlm-base-plus-sv can be neither found in the Hugging Face cache nor downloaded,
# the demo uses the pretrained GE2E encoder (--model resemblyzer, weights inside the
# package: pip install -e ".[resemblyzer]"), which gives real answers offline. Only when
# that is not installed either does it fall back to a RANDOM-weight model of WavLM's
# architecture: every command runs, but its identify/verify answers are meaningless.
set -euo pipefail

CALLER_DIR="$PWD"   # DEMO_DIR and SPEAKERDB_MODEL may be given relative to it
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
START=$SECONDS

say() { printf '\n== %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
# Print a command the way a user would type it (show), then run it too (run).
show() {
    printf '\n$'
    printf ' %q' "$@"
    printf '\n'
}
run() {
    show "$@"
    "$@"
}

if ! command -v speakerdb >/dev/null || ! command -v python >/dev/null; then
    die "the speakerdb command is not on PATH: activate the virtualenv and run pip install -e . first"
fi

# ---- espeak-ng, which makes the speech -----------------------------------------------
if ! command -v espeak-ng >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing espeak-ng (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        # quiet unless it fails ("debconf: delaying package configuration" is no news)
        apt_log="$(mktemp)"
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends espeak-ng; } >"$apt_log" 2>&1; then
            cat "$apt_log" >&2
            rm -f "$apt_log"
            die "apt-get could not install espeak-ng (output above)"
        fi
        rm -f "$apt_log"
        echo "installed $(espeak-ng --version | cut -d' ' -f1-4)"
    else
        die "the demo makes its speech with espeak-ng, which is not installed. Install it and run again:
    sudo apt-get install espeak-ng     # Debian, Ubuntu
    sudo dnf install espeak-ng         # Fedora
    brew install espeak-ng             # macOS"
    fi
fi

# ---- work directory and a database of its own ---------------------------------------
if [ -n "${DEMO_DIR:-}" ]; then
    WORK="$DEMO_DIR"
    case "$WORK" in /*) ;; *) WORK="$CALLER_DIR/$WORK" ;; esac
    mkdir -p "$WORK"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/speakerdb-demo.XXXXXX")"
fi
WORK="$(cd "$WORK" && pwd)"
DB="demo.sqlite"                       # relative to $WORK, where the commands below run
rm -f "$WORK/$DB" "$WORK/$DB.faiss"    # a fresh database on every run, even in a kept DEMO_DIR
export SPEAKERDB_DB="$WORK/$DB"        # belt and braces: --db is passed on every call too
echo "work directory: $WORK"

# ---- speech ---------------------------------------------------------------------------
# speaker name -> espeak-ng voice (language+variant; all ship with Debian's espeak-ng 1.51)
NAMES=(alice bob callum)
declare -A VOICE=([alice]="en-us+f3" [bob]="en-gb+m3" [callum]="en-gb-scotland+m7")
ENROLL_TEXT=(
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate."
    "Please call Stella and ask her to bring these things with her from the store."
    "A rainbow is a division of white light into many beautiful colours after the rain."
)
TEST_TEXT="Yesterday the museum opened a new hall full of old maps, clocks and sailing ships."

say "synthesising speech with espeak-ng into $WORK/audio"
mkdir -p "$WORK/audio"
for name in "${NAMES[@]}"; do
    for i in "${!ENROLL_TEXT[@]}"; do
        espeak-ng -v "${VOICE[$name]}" -w "$WORK/audio/$name-$((i + 1)).wav" "${ENROLL_TEXT[$i]}"
    done
    espeak-ng -v "${VOICE[$name]}" -w "$WORK/audio/$name-unseen.wav" "$TEST_TEXT"
done
# Several formats: the second enrollment sentence as FLAC, the third as Ogg Vorbis.
python - "$WORK/audio" "${NAMES[@]}" <<'EOF'
import sys
from pathlib import Path

import soundfile as sf

folder = Path(sys.argv[1])
for name in sys.argv[2:]:
    for n, (fmt, subtype, ext) in ((2, ("FLAC", "PCM_16", "flac")), (3, ("OGG", "VORBIS", "ogg"))):
        wav = folder / f"{name}-{n}.wav"
        data, rate = sf.read(wav)
        sf.write(folder / f"{name}-{n}.{ext}", data, rate, format=fmt, subtype=subtype)
        wav.unlink()
EOF
for name in "${NAMES[@]}"; do
    echo "  $name (espeak-ng -v ${VOICE[$name]}): $(cd "$WORK/audio" && echo "$name"-[123].* | sed 's/ /, /g'); held back: $name-unseen.wav"
done

# ---- model ----------------------------------------------------------------------------
# exit 0: loads; exit 3: ModelLoadError (message on stderr); anything else: a real failure.
check_model() {
    python - "$1" <<'EOF'
import sys

from speakerdb.embed import load_embedder
from speakerdb.errors import ModelLoadError

try:
    embedder = load_embedder(sys.argv[1] or None)
except ModelLoadError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
print(f"loaded {embedder.model_id} ({embedder.dim}-d embeddings)")
EOF
}

RANDOM_MODEL=0
if [ -n "${SPEAKERDB_MODEL:-}" ]; then
    MODEL="$SPEAKERDB_MODEL"
    # a directory, maybe relative to where the user ran us: make it absolute (else a hub id)
    if (cd "$CALLER_DIR" && [ -d "$MODEL" ]); then MODEL="$(cd "$CALLER_DIR" && cd "$MODEL" && pwd)"; fi
    say "model: $MODEL (from SPEAKERDB_MODEL)"
    check_model "$MODEL" || die "SPEAKERDB_MODEL=$SPEAKERDB_MODEL cannot be loaded (see above)"
else
    MODEL="microsoft/wavlm-base-plus-sv"
    say "model: trying $MODEL (local Hugging Face cache, then the hub)"
    set +e
    check_model ""
    status=$?
    set -e
    if [ "$status" = 3 ]; then
        say "model: $MODEL cannot be loaded here; trying the pretrained GE2E encoder (--model resemblyzer)"
        set +e
        check_model resemblyzer
        status=$?
        set -e
        if [ "$status" = 0 ]; then
            MODEL="resemblyzer"
            echo "using GE2E: real answers, with its own threshold (0.80)"
        elif [ "$status" != 3 ]; then
            die "checking the GE2E encoder failed unexpectedly (exit $status, see above)"
        fi
    fi
    if [ "$status" = 3 ]; then
        RANDOM_MODEL=1
        MODEL="$WORK/wavlm-random"
        cat <<EOF

*** Neither microsoft/wavlm-base-plus-sv nor the GE2E encoder could be loaded (above). ***
*** The demo goes on with a RANDOM-weight model of WavLM's architecture, so that     ***
*** every command can be shown. Such a model CANNOT tell real speakers apart: the    ***
*** identify and verify answers below are MEANINGLESS (only identical audio scores   ***
*** 1.0). For real answers offline: pip install -e ".[resemblyzer]" and run the demo ***
*** again; or SPEAKERDB_MODEL=DIR, where DIR holds the WavLM weights from            ***
*** \`hf download microsoft/wavlm-base-plus-sv --local-dir DIR\` on a machine with network. ***

EOF
        if [ -f "$MODEL/config.json" ] && [ -f "$MODEL/preprocessor_config.json" ]; then
            echo "reusing the random checkpoint already in $MODEL"
        else
            # (no "Writing model shards" bar from transformers in the middle of the demo)
            HF_HUB_DISABLE_PROGRESS_BARS=1 run python "$REPO_ROOT/scripts/make_random_checkpoint.py" "$MODEL"
        fi
    elif [ "$status" != 0 ]; then
        die "checking the model failed unexpectedly (exit $status, see above)"
    fi
fi
# The commands run in $WORK; a model directory inside it is named relatively (./wavlm-random).
case "$MODEL" in "$WORK"/*) MODEL="./${MODEL#"$WORK"/}" ;; esac

# ---- speakerdb, end to end ------------------------------------------------------------
cd "$WORK"
SDB=(speakerdb --db "$DB" --model "$MODEL")

say "enroll each speaker from three recordings (WAV, FLAC, Ogg)"
for name in "${NAMES[@]}"; do
    run "${SDB[@]}" enroll "$name" "audio/$name"-[123].*
done

say "the database now holds"
run "${SDB[@]}" list

say "identify the held-back sentences, which were not enrolled"
unseen=()
for name in "${NAMES[@]}"; do unseen+=("audio/$name-unseen.wav"); done
run "${SDB[@]}" identify "${unseen[@]}"
show "${SDB[@]}" identify "${unseen[@]}" --json
"${SDB[@]}" identify "${unseen[@]}" --json >identify.json
cat identify.json

say "verify claims: a true one (alice says alice) and a false one (bob claims to be alice)"
run "${SDB[@]}" verify alice audio/alice-unseen.wav
run "${SDB[@]}" verify alice audio/bob-unseen.wav

say "the database"
run "${SDB[@]}" info

# ---- summary --------------------------------------------------------------------------
correct="$(python - identify.json <<'EOF'
import json
import sys
from pathlib import Path

results = json.loads(Path(sys.argv[1]).read_text())
right = sum(Path(r["file"]).name.split("-")[0] == r["speaker"] for r in results)
print(f"{right}/{len(results)}")
EOF
)"
if [ "$RANDOM_MODEL" = 1 ]; then
    model_note="a RANDOM-weight model, so that score means nothing"
else
    model_note="model $MODEL"
fi
printf '\ndemo done in %ds: %d speakers enrolled, %s unseen sentences identified correctly (%s); files in %s\n' \
    "$((SECONDS - START))" "${#NAMES[@]}" "$correct" "$model_note" "$WORK"
