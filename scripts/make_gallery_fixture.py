#!/usr/bin/env python
"""Write tests/data/v<FORMAT_VERSION>.gallery: a small gallery that every later speakerdb must still import.

    python scripts/make_gallery_fixture.py tests/data/v1.gallery

Run once per new gallery format version and commit the file; never regenerate an
existing one (that would defeat its purpose). Its model id is the tests' fake embedder,
so the test suite can import it into a database built with that embedder.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

import kit
from speakerdb import __version__
from speakerdb.storage import gallery


def main(path: str) -> None:
    rng = np.random.default_rng(20261125)
    dim = 32

    def unit() -> np.ndarray:
        v = rng.standard_normal(dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def utt(source: str, seconds: float) -> gallery.GalleryUtterance:
        return gallery.GalleryUtterance(
            source, seconds, hashlib.sha256(source.encode()).hexdigest(), "2026-11-25T00:00:00Z", unit()
        )

    speakers = [
        gallery.GallerySpeaker(
            "ada",
            "2026-11-25T00:00:00Z",
            "2026-11-25T00:00:00Z",
            {"lab": "analytical engines"},
            [utt("ada-1.flac", 4.5), utt("ada-2.flac", 3.25)],
        ),
        gallery.GallerySpeaker("grace", "2026-11-25T00:00:00Z", "2026-11-25T00:00:00Z", {}, [utt("grace-1.wav", 6.0)]),
    ]
    g = gallery.Gallery("fake-spectral-v1", None, dim, speakers)
    size = gallery.write(path, g, __version__)
    matrix = np.stack([u.embedding for s in speakers for u in s.utterances])
    print(f"wrote {path} ({size} bytes); embeddings sha256 {hashlib.sha256(matrix.tobytes()).hexdigest()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, "no table; tests/data/v1.gallery, which tests/test_gallery.py imports (docs/development.md)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", nargs="?", default="tests/data/v1.gallery", help="the gallery file to write")
    main(parser.parse_args().path)
