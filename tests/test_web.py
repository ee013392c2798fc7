"""The web page at ``/`` (issue 26) in a real browser: Debian's Chromium driven by Playwright,
against a real ``speakerdb serve`` (tiny random checkpoint) on a free port.

One server and one browser for the module; each test opens its own browser context (a fresh
tab: empty sessionStorage) and makes its own speakers, so the tests may run in any order or
on different xdist workers. Chromium's fake media flags play a generated recording as the
microphone. A screenshot of every view at 1280 x 800 is saved to ``$SPEAKERDB_SCREENSHOTS``
(default: ``web-screenshots`` under pytest's temporary directory), never into the repository.

Why Playwright: it waits for what the page shows (``expect``) and sets files on inputs, where
Selenium needs explicit waits; starting it costs a little more (docs/web.md has the numbers).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import speech, write
from speakerdb import SpeakerDB
from test_server import Server, _part

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
VIEWS = ("speakers", "enroll", "identify", "verify", "timeline", "live", "settings")

playwright_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e .[dev]")
expect = playwright_api.expect
if not os.path.exists(CHROMIUM):
    pytest.skip("no Chromium: apt-get install -y chromium (.ci/run does)", allow_module_level=True)


# ---- the server, the browser, the recordings -----------------------------------------------
@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    """Generated speech (conftest.speech: Silero hears it as speech): ``mic`` is what the fake
    microphone plays, in a loop; the others are files the tests upload."""
    d = tmp_path_factory.mktemp("web-audio")
    quiet = 0.002 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    pause = 0.002 * np.random.default_rng(1).standard_normal(24000).astype(np.float32)
    out = {
        # Pauses of 1.5 s: long enough for the live session to settle each turn into final segments.
        "mic": write(d / "mic.wav", np.concatenate([speech(110, 4.0, seed=1), pause, speech(110, 4.0, seed=2), pause])),
        "ann": write(d / "ann.wav", speech(220, 3.0, seed=3, tract=1.2)),
        "ben": write(d / "ben.wav", speech(150, 3.0, seed=4, tract=1.1)),
        "ann2": write(d / "ann2.wav", speech(220, 3.0, seed=5, tract=1.2)),
        "ivy": write(d / "ivy.wav", speech(130, 3.0, seed=11, tract=1.05)),  # only ever ivy's
        "meeting": write(
            d / "meeting.wav", np.concatenate([speech(220, 4.0, seed=6, tract=1.2), quiet, speech(150, 4.0, seed=7)])
        ),
    }
    (d / "notes.txt").write_text("not audio")
    out["text"] = d / "notes.txt"
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    """One worker, keys read / write / admin, a speaker ``bob`` enrolled before the page opens."""
    d = tmp_path_factory.mktemp("web-served")
    db_path = d / "web.sqlite"
    bob = write(d / "bob.wav", speech(180, 3.0, seed=9, tract=0.9))  # unlike the microphone's voice
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        keys = {scope: db.create_key(f"web-{scope}", scope).key for scope in ("read", "write", "admin")}
        db.enroll("bob", [str(bob)], metadata={"team": "sales"})
        db.create_gallery("siteb")  # another tenant, with its own key and speaker
        siteb = db.for_gallery("siteb")
        keys["siteb"] = siteb.create_key("siteb-admin", "admin").key
        siteb.enroll("gus", [str(bob)])
        # The live test's own gallery: the tiny random model scores every voice alike (~0.999), so
        # the microphone's voice is named for certain only where no other speaker is enrolled.
        db.create_gallery("live")
        keys["live"] = db.for_gallery("live").create_key("web-live", "write").key
    srv = Server(db_path, tiny_checkpoint, d / "server.log")
    srv.keys = keys
    srv.start()
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log.read_text()


@pytest.fixture(scope="module")
def browser(audio):
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={audio['mic']}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: $SPEAKERDB_SCREENSHOTS, or pytest's temporary directory."""
    d = Path(os.environ.get("SPEAKERDB_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "web-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


class Tab:
    """One browser tab on the page, with what it logged and every request it made."""

    def __init__(self, context, server: Server) -> None:
        self.context, self.server = context, server
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r))
        self.sockets: list[tuple[str, list]] = []  # (URL, text frames sent)
        self.page.on("websocket", self._socket)

    def _socket(self, ws) -> None:
        sent: list = []
        self.sockets.append((ws.url, sent))
        ws.on("framesent", lambda payload: isinstance(payload, str) and sent.append(payload))

    def open(self, view: str = "") -> "Tab":
        self.page.goto(f"{self.server.url}/#/{view}")
        return self

    def sign_in(self, scope: str, gallery: str = "") -> "Tab":
        page = self.page
        if not page.url.startswith(self.server.url):
            self.open()
        page.get_by_label("API key").fill(self.server.keys[scope])
        if gallery:
            page.get_by_label("Gallery (optional)").fill(gallery)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#who-text")).to_contain_text(f"web-{scope}")
        return self

    def go(self, view: str) -> None:
        self.page.evaluate("v => { location.hash = v }", f"#/{view}")
        expect(self.page.locator("main h1")).to_be_visible()

    def main(self):
        return self.page.locator("main")


@pytest.fixture
def tab(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    t = Tab(context, server)
    yield t
    # Nothing of the page's own failures: no CSP refusal, no script error.
    assert not [e for e in t.errors if "Refused" in e or "Uncaught" in e or "Error" in e.split(":")[0]], t.errors
    context.close()


def _enroll(server: Server, name: str, path: Path) -> None:
    part = ("files", path.name, path.read_bytes())
    status, _, doc = server.call("POST", f"/v1/speakers/{name}/enrollments", key=server.keys["admin"], files=[part])
    assert status == 201, doc


# ---- the page and its headers ----------------------------------------------------------------
def test_the_page_and_its_files_are_sent_with_a_strict_policy(server):
    """CSP (this origin only, its WebSocket, no framing, no inline script), nosniff, no referrer;
    only the package's files are served, and the page has no inline script to allow."""
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")):
        with urllib.request.urlopen(server.url + path) as r:
            headers = r.headers
        assert headers["Content-Type"].startswith(kind)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert f"connect-src 'self' ws://127.0.0.1:{server.port} wss://127.0.0.1:{server.port}" in csp
        assert "unsafe" not in csp and "http" not in csp.replace("ws://", "").replace("wss://", "")
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    page = urllib.request.urlopen(server.url + "/").read().decode()
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == [] and " on" not in re.sub(r"\s+", " ", page).lower().replace(
        " only", ""
    )
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from another origin
    for path in ("/static/nope.js", "/static/../app.py", "/static/%2e%2e/web.py", "/static/"):
        status, _, doc = server.call("GET", path)
        assert status == 404, (path, doc)
    # The key's scope, as the page learns it (issue 26: what a scope cannot do is not offered).
    status, _, doc = server.call("GET", "/v1/whoami", key=server.keys["write"])
    assert (status, doc) == (
        200,
        {"key": "web-write", "scope": "write", "scopes": ["read", "write"], "keys_required": True},
    )
    assert server.call("GET", "/v1/whoami")[0] == 401


def test_the_api_docs_are_served_from_this_service_and_run_under_its_policy(tab, server):
    """/docs loaded Swagger UI from a CDN into this origin, where the page's tab keeps its key,
    under no policy, and showed nothing on a machine without internet. Every file now comes
    from the service, its one inline script is allowed by hash, and the reference renders."""
    with urllib.request.urlopen(server.url + "/docs") as r:
        html, csp = r.read().decode(), r.headers["Content-Security-Policy"]
    assert not re.search(r"(src|href)=[\"'](https?:)?//", html), html  # nothing from another origin
    assert "script-src 'self' 'sha256-" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        with urllib.request.urlopen(f"{server.url}/docs/assets/{name}") as r:
            assert r.headers["Content-Type"].startswith(kind) and r.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/docs/assets/index.html", "/docs/assets/..%2f__init__.py", "/redoc"):
        assert server.call("GET", path)[0] == 404, path
    page = tab.page
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("/v1/speakers/{name}/enrollments").first).to_be_visible()
    assert all(r.url.startswith(server.url) for r in tab.requests), [r.url for r in tab.requests]


# ---- sign-in ----------------------------------------------------------------------------------
def test_sign_in_a_wrong_key_a_read_key_and_sign_out(tab, server):
    page = tab.open().page
    expect(page.locator("main h1")).to_have_text("Sign in")
    expect(page.locator("#nav")).to_be_hidden()
    # Nothing to sign out of: no key line, no button (a Tab stop that did nothing).
    expect(page.locator("#who")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    page.get_by_label("API key").fill("sdb_0000_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(tab.main()).to_contain_text("the API key is not valid (unknown, revoked or mistyped)")
    key = page.get_by_label("API key")
    expect(key).to_have_attribute("aria-invalid", "true")
    expect(key).to_have_accessible_description(re.compile(r"Kept in this tab only\. the API key is not valid"))
    assert page.evaluate("sessionStorage.length") == 0

    seen = len(tab.requests)
    tab.sign_in("read")
    expect(page.locator("main h1")).to_have_text("Speakers")
    nav = page.locator("#nav")
    for view in ("Speakers", "Identify", "Verify", "Timeline", "Live"):
        expect(nav.get_by_role("link", name=view)).to_be_visible()
    for view in ("Enroll", "Settings"):  # beyond a read key
        expect(nav.get_by_role("link", name=view)).to_be_hidden()
    tab.go("settings")
    expect(tab.main()).to_contain_text("This view needs a key with scope admin; yours has read.")
    tab.go("speakers/bob")
    expect(tab.main()).to_contain_text("team")
    expect(page.get_by_role("button", name=re.compile("Rename|Remove"))).to_have_count(0)

    key = server.keys["read"]
    api = [r for r in tab.requests[seen:] if "/v1/" in r.url]
    assert len(api) >= 3 and all(r.headers.get("authorization") == f"Bearer {key}" for r in api)
    assert all(key not in r.url for r in tab.requests) and key not in page.url
    assert sorted(page.evaluate("Object.keys(sessionStorage)")) == ["speakerdb.gallery", "speakerdb.key"]
    assert page.evaluate("localStorage.length") == 0

    # The back button walks the views' URLs.
    page.go_back()
    expect(page.locator("main h1")).to_have_text("Settings")
    page.go_forward()
    expect(page.locator("main h1")).to_have_text("bob")

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("main h1")).to_have_text("Sign in")
    expect(tab.main()).to_contain_text("Signed out")
    # The heading takes the focus; what happened is its description, read out with it.
    expect(page.locator("main h1")).to_have_accessible_description("Signed out: the key is forgotten.")
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.locator("main h1")).to_have_text("Sign in")


def test_a_key_of_another_gallery_signs_in_to_that_gallery(tab, server):
    """A gallery's key works in its gallery only (/v1/galleries/NAME/...): the page asks which."""
    page = tab.open().page
    page.get_by_label("API key").fill(server.keys["siteb"])
    page.get_by_role("button", name="Sign in").click()  # the default gallery: not this key's
    expect(tab.main().locator(".error")).to_contain_text("gallery")
    page.get_by_label("Gallery (optional)").fill("siteb")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who-text")).to_have_text("Key siteb-admin (admin), gallery siteb")
    expect(page.locator("main tbody tr")).to_have_count(1)
    expect(page.locator("main tbody")).to_contain_text("gus")
    assert all("/v1/galleries/siteb/" in r.url for r in tab.requests if "/v1/" in r.url and "whoami" not in r.url)
    page.reload()  # the tab remembers the gallery with the key
    expect(page.locator("#who-text")).to_contain_text("gallery siteb")


# ---- speakers ---------------------------------------------------------------------------------
def test_speakers_search_show_rename_and_remove_with_a_confirmation_naming_them(tab, server, audio):
    _enroll(server, "cleo", audio["ann"])
    _enroll(server, "dora", audio["ben"])
    page = tab.sign_in("admin").page
    tab.go("speakers")
    search = page.get_by_label("Search speakers")
    search.fill("cle")
    rows = page.locator("main tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("cleo")
    search.fill("sales")  # metadata is searched too
    expect(rows.first).to_contain_text("bob")
    search.fill("")
    page.get_by_role("link", name="cleo", exact=True).click()
    expect(page.locator("main h1")).to_have_text("cleo")
    expect(tab.main()).to_contain_text("ann.wav")
    # The way back is named by its words; the arrow is drawn, not read out.
    expect(page.get_by_role("link", name="All speakers", exact=True)).to_be_visible()

    page.get_by_label("New name").fill("dora")  # taken: the service's message, not a status
    page.get_by_role("button", name="Rename").click()
    expect(tab.main().locator(".error")).to_contain_text("dora")
    expect(tab.main().locator(".error")).not_to_contain_text("409")
    page.get_by_label("New name").fill("cleopatra")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator("main h1")).to_have_text("cleopatra")
    assert page.url.endswith("#/speakers/cleopatra")

    page.get_by_role("button", name="Remove cleopatra…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Remove cleopatra?")
    expect(dialog).to_contain_text("1 utterance")
    expect(dialog).to_have_accessible_description(re.compile(r"^The speaker cleopatra, 1 utterance .* undone"))
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert server.call("GET", "/v1/speakers/cleopatra", key=server.keys["read"])[0] == 200
    page.get_by_role("button", name="Remove cleopatra…").click()
    page.get_by_role("dialog").get_by_role("button", name="Remove cleopatra").click()
    expect(page.locator("main h1")).to_have_text("Speakers")
    expect(tab.main()).to_contain_text("Removed cleopatra (1 utterance).")
    expect(page.locator("main h1")).to_have_accessible_description("Removed cleopatra (1 utterance).")
    assert server.call("GET", "/v1/speakers/cleopatra", key=server.keys["read"])[0] == 404


# ---- enroll -----------------------------------------------------------------------------------
def test_enroll_from_the_microphone_and_from_files_with_the_clis_notes(tab, server, audio):
    page = tab.sign_in("write").page
    tab.go("enroll")
    page.get_by_label("Speaker name").fill("mia")
    start = page.get_by_role("button", name="Start recording")
    start.click()
    stop = page.get_by_role("button", name="Stop recording")
    # Its label says what it does now; a label that changes is no toggle (aria-pressed too would say both).
    expect(stop).to_be_visible()
    assert stop.get_attribute("aria-pressed") is None
    expect(page.locator(".recorder output")).to_have_text(re.compile(r"^[3-9]\.\d s$"), timeout=15_000)
    assert page.locator("#enroll-level").evaluate("m => m.value") > -60  # the meter moved
    stop.click()
    expect(page.get_by_role("list", name="Recordings to enroll")).to_contain_text("recording-1.wav")
    page.get_by_label("Audio files").set_input_files(str(audio["ann2"]))
    page.get_by_label("Metadata (optional)").fill("team=support")
    page.get_by_role("button", name="Enroll", exact=True).click()
    notes = tab.main().locator("pre.notes")
    expect(notes).to_contain_text("created mia: 2 utterance(s) added, 0 skipped, 2 in all")
    # The tiny random model finds every voice alike: enroll's note says so, as the CLI does.
    expect(notes).to_contain_text(re.compile(r"^warning: this voice matches \w+ \(\d\.\d\d\): a typo\? --new", re.M))
    doc = server.call("GET", "/v1/speakers/mia", key=server.keys["read"])[2]
    assert doc["metadata"] == {"team": "support"}
    assert [u["source"] for u in doc["utterances"]] == ["recording-1.wav", "ann2.wav"]
    assert 3.0 <= doc["utterances"][0]["duration_s"] <= 9.0

    # The same file again: skipped with a note, as `speakerdb enroll` prints it.
    page.get_by_label("Audio files").set_input_files(str(audio["ann2"]))
    page.get_by_role("button", name="Enroll", exact=True).click()
    expect(notes).to_contain_text("note: skipped ann2.wav:")
    expect(notes).to_contain_text("updated mia: 0 utterance(s) added, 1 skipped, 2 in all")  # the metadata again
    # A refusal is the service's message.
    page.get_by_label("Audio files").set_input_files(str(audio["text"]))
    page.get_by_role("button", name="Enroll", exact=True).click()
    expect(tab.main().locator(".error")).to_contain_text("notes.txt")
    # Nothing of the recording is kept in the browser's storage.
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("indexedDB.databases().then(d => d.length)") == 0
    assert page.evaluate("caches.keys().then(k => k.length)") == 0


# ---- live ---------------------------------------------------------------------------------------
def test_a_voice_enrolled_from_the_microphone_is_named_live(tab, server, shots):
    """The microphone plays one generated voice in a loop: ~4 s of it enrolled as lena, then the
    live view streams it to /v1/stream and lena's lane appears, provisional then final; stopping
    ends the session with its timeline. The tiny random model scores every voice alike, so lena
    is enrolled in a gallery of her own (the fixture's "live"), and the page streams to it."""
    page = tab.sign_in("live", gallery="live").page
    tab.go("enroll")
    page.get_by_label("Speaker name").fill("lena")
    page.get_by_role("button", name="Start recording").click()
    expect(page.locator(".recorder output")).to_have_text(re.compile(r"^[4-9]\.\d s$"), timeout=15_000)
    page.get_by_role("button", name="Stop recording").click()
    page.get_by_role("button", name="Enroll", exact=True).click()
    expect(tab.main().locator("pre.notes")).to_contain_text("created lena: 1 utterance(s) added")

    tab.go("live")
    page.get_by_role("button", name="Start listening").click()
    expect(page.get_by_role("button", name="Stop listening")).to_be_visible()
    assert page.get_by_role("button", name="Stop listening").get_attribute("aria-pressed") is None
    lane = page.locator(".lane.known", has=page.locator(".lane-name", has_text="lena"))
    try:
        expect(lane).to_have_count(1, timeout=40_000)
    except AssertionError:
        raise AssertionError(f"no lane named lena; the lanes: {page.locator('.lanes').inner_text()!r}") from None
    expect(lane.locator(".seg:not(.provisional)").first).to_be_attached(timeout=30_000)  # settled
    # The status says who speaks (read out when it changes), not where each stretch of speech began.
    expect(page.get_by_role("status").filter(has_text="speaking")).to_have_text("lena speaking.")
    expect(page.locator("#live-level")).not_to_have_attribute("value", "-60")
    # The length heard changes ten times a second: an <output> (a live region) that says so is off.
    expect(page.locator(".recorder output")).to_have_attribute("aria-live", "off")
    page.screenshot(path=str(shots / "live-listening.png"))
    assert page.locator(".lane:not(:has(.seg))").count() == 0  # a voice revised away takes its lane along
    page.get_by_role("button", name="Stop listening").click()
    summary = tab.main().get_by_role("heading", name="Session")
    expect(summary).to_be_visible(timeout=30_000)
    expect(tab.main()).to_contain_text(re.compile(r"heard, \d+ voices?: .*lena"))
    expect(page.get_by_role("table", name="Who spoke when")).to_contain_text("lena")
    # The key went in the socket's first message, never in its URL; "end" asked for the timeline.
    [(url, sent)] = tab.sockets
    assert url == f"ws://127.0.0.1:{server.port}/v1/galleries/live/stream?sample_rate=16000&encoding=f32le"
    assert json.loads(sent[0]) == {"type": "auth", "key": server.keys["live"]}
    assert json.loads(sent[-1]) == {"type": "end"}
    expect(tab.main().locator(".error")).to_have_count(0)


# ---- identify and verify ------------------------------------------------------------------------
def test_identify_and_verify_show_scores_against_the_threshold(tab, server, audio):
    _enroll(server, "ivy", audio["ivy"])
    page = tab.sign_in("read").page
    tab.go("identify")
    page.get_by_label("Recordings to identify").set_input_files([str(audio["ivy"]), str(audio["text"])])
    answers = page.locator("article.answer")
    expect(answers).to_have_count(2)
    expect(answers.nth(0)).to_contain_text(re.compile(r"ivy \(score 1\.000 ≥ threshold 0\.\d{3}\)"))
    expect(answers.nth(0).get_by_role("list", name="Candidates for ivy.wav")).to_contain_text("ivy 1.000")
    expect(answers.nth(1)).to_contain_text("notes.txt")
    expect(answers.nth(1).locator(".error")).to_be_visible()
    # The status reads out the verdicts themselves, not only how many of each came.
    expect(page.get_by_role("status").filter(has_text="answers")).to_have_text(
        re.compile(
            r"^2 answers \(1 named, 0 unknown, 1 failed\), threshold (0\.\d{3})\. "
            r"ivy\.wav: ivy \(score 1\.000 ≥ threshold \1\)\. notes\.txt: failed, [^.]+\.$"
        )
    )

    tab.go("verify")
    page.get_by_label("Claimed speaker").select_option("ivy")
    page.get_by_label("Recording to verify").set_input_files(str(audio["ivy"]))
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(tab.main().locator(".verdict")).to_contain_text(re.compile(r"accepted: ivy \(score 1\.000 ≥ threshold"))
    # Announced when it comes, not only shown: the verdict is inside a live region.
    live = "v => Boolean(v.closest('[aria-live=polite], [aria-live=assertive], [role=status], [role=alert]'))"
    assert tab.main().locator(".verdict").evaluate(live)
    page.get_by_label("Claimed speaker").select_option("bob")
    page.get_by_label("Threshold (optional)").fill("0.99999")
    page.get_by_role("button", name="Verify", exact=True).click()
    rejected = re.compile(r"rejected: not bob \(score 0\.\d{3} < threshold 1\.000\)")
    expect(tab.main().locator(".verdict")).to_contain_text(rejected)
    page.get_by_label("Recording to verify").set_input_files(str(audio["text"]))  # the service's own words
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(tab.main().locator(".error")).to_contain_text("notes.txt")


def test_threshold_inputs_state_the_services_limits_and_show_its_refusal(tab, server, audio, tmp_path):
    """Identify's, verify's and timeline's thresholds state what the service takes on the
    database's scale (raw cosine 0 to 1, AS-norm norm.AS_NORM_RANGE); a value outside is
    refused on the page, saying the limits, with nothing uploaded; one sent anyway (a page
    loaded before the scale changed) gets the service's refusal as its message."""
    from speakerdb.scoring import norm

    page = tab.sign_in("read").page
    box = page.get_by_label("Threshold (optional)")

    def posted() -> list[str]:
        return [r.url for r in tab.requests if r.method == "POST"]

    for view in ("identify", "verify", "timeline"):
        tab.go(view)
        expect(tab.main()).to_contain_text("A cosine score from 0 to 1")
        expect(box).to_have_attribute("min", "0")
        expect(box).to_have_attribute("max", "1")
    tab.go("identify")
    box.fill("-0.5")
    page.get_by_label("Recordings to identify").set_input_files(str(audio["ben"]))
    expect(tab.main().locator(".error")).to_have_text(
        "threshold -0.5 is not a cosine score from 0 to 1: the service takes no other"
    )
    # The error is the field's: marked invalid, said in its description (after its hint), focused.
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_have_accessible_description(re.compile(r"^A cosine score from 0 to 1.* threshold -0\.5 is not a"))
    expect(box).to_be_focused()
    tab.go("verify")
    page.get_by_label("Claimed speaker").select_option("bob")
    page.get_by_label("Recording to verify").set_input_files(str(audio["ben"]))
    box.fill("1.5")
    page.get_by_role("button", name="Verify", exact=True).click()
    expect(tab.main().locator(".error")).to_contain_text("threshold 1.5 is not a cosine score from 0 to 1")
    expect(box).to_have_attribute("aria-invalid", "true")
    box.fill("0.5")  # being corrected: no longer marked
    expect(box).not_to_have_attribute("aria-invalid", "true")
    expect(box).not_to_have_accessible_description(re.compile(r"threshold 1\.5"))
    tab.go("timeline")
    box.fill("-1")
    page.get_by_label("Recording", exact=True).set_input_files(str(audio["meeting"]))
    expect(tab.main().locator(".error")).to_contain_text("threshold -1 is not a cosine score from 0 to 1")
    assert posted() == []  # nothing uploaded
    # A page that still states other limits (here none) sends it: the service's own words.
    tab.go("identify")
    box.evaluate("b => b.removeAttribute('min')")
    box.fill("-0.5")
    page.get_by_label("Recordings to identify").set_input_files(str(audio["ben"]))
    expect(tab.main().locator(".error")).to_contain_text("threshold -0.5 would accept nearly every voice")
    assert len(posted()) == 1

    # On an AS-norm gallery the same inputs take its scale: an AS-norm threshold for one call is sent.
    cohort = [_part(write(tmp_path / f"c{i}.wav", speech(95 + 21 * i, 1.5, seed=60 + i))) for i in range(10)]
    admin = server.keys["siteb"]
    fields = {"screen_enrolled": "false", "top_n": "5"}
    status, _, doc = server.call("POST", "/v1/galleries/siteb/norm", key=admin, fields=fields, files=cohort)
    assert status == 200, doc
    try:
        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("API key").fill(admin)
        page.get_by_label("Gallery (optional)").fill("siteb")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#who-text")).to_contain_text("gallery siteb")
        low, high = norm.AS_NORM_RANGE
        tab.go("verify")
        expect(tab.main()).to_contain_text(f"An AS-norm score from {low:g} to {high:g}")
        expect(box).to_have_attribute("min", f"{low:g}")
        expect(box).to_have_attribute("max", f"{high:g}")
        page.get_by_label("Claimed speaker").select_option("gus")
        page.get_by_label("Recording to verify").set_input_files(str(audio["ben"]))
        box.fill("3")
        page.get_by_role("button", name="Verify", exact=True).click()
        expect(tab.main().locator(".verdict")).to_contain_text("threshold 3.000")
        box.fill(f"{high + 1:g}")
        page.get_by_role("button", name="Verify", exact=True).click()
        expect(tab.main().locator(".error")).to_contain_text(f"is not an AS-norm score from {low:g} to {high:g}")
    finally:
        assert server.call("DELETE", "/v1/galleries/siteb/norm", key=admin)[0] == 200


# ---- timeline -----------------------------------------------------------------------------------
def test_timeline_lanes_a_moving_cursor_and_an_unknown_voice_enrolled(tab, server, audio):
    page = tab.sign_in("write").page
    tab.go("timeline")
    # Every window scores below 1 against every enrolled speaker: each voice is unknown.
    page.get_by_label("Threshold (optional)").fill("1")
    page.get_by_label("Recording", exact=True).set_input_files(str(audio["meeting"]))
    lanes = page.locator(".lane")
    expect(lanes.first).to_be_visible(timeout=30_000)
    expect(tab.main()).to_contain_text("meeting.wav: 8.5 s")
    labels = lanes.evaluate_all("ls => ls.map(l => l.dataset.label)")
    assert labels and all(label.startswith("unknown-") for label in labels)
    # The lanes as text: under a heading of their own, and a table of every segment in time order.
    expect(page.get_by_role("heading", level=2, name="Voices in meeting.wav")).to_be_visible()
    spans = page.get_by_role("table", name="Who speaks when in meeting.wav")
    expect(spans.locator("tbody tr")).to_have_count(page.locator(".lane .seg").count())
    expect(spans.locator("thead")).to_have_text(re.compile(r"From\s*To\s*Voice\s*Score"))
    expect(spans.locator("tbody tr").first).to_contain_text(re.compile(r"^0\.\d s\s*\d+\.\d s\s*unknown-\d"))
    segments = page.locator(".lane .seg")
    assert segments.count() >= 1
    # The player's cursor moves over the lanes: play, and choosing a segment seeks there.
    cursor = lanes.first.locator(".cursor")
    assert cursor.evaluate("c => c.style.left") == "0%"
    page.locator("audio").evaluate("a => { a.currentTime = 4.25 }")
    expect(cursor).to_have_attribute("style", re.compile(r"left: 50%"))
    segments.last.click()
    expect(cursor).not_to_have_attribute("style", re.compile(r"left: 50%;"))
    # A segment's focus ring is inside it: the track clips anything outside (it hid the page's ring).
    segments.first.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # focused from the keyboard: :focus-visible
    ring = segments.first.evaluate(
        "s => { const c = getComputedStyle(s); return [c.outlineStyle, c.outlineWidth, c.outlineOffset] }"
    )
    assert ring[0] == "solid" and float(ring[1][:-2]) + float(ring[2][:-2]) <= 0, ring

    label = labels[0]
    page.get_by_label(f"Name {label}").fill("tess")
    page.get_by_role("button", name=f"Enroll {label}").click()
    expect(lanes.first.locator("pre.notes")).to_contain_text(re.compile(r"created tess: 1 utterance\(s\) added"))
    expect(lanes.first.locator(".lane-name")).to_have_text("tess")
    expect(spans).to_contain_text("tess")
    doc = server.call("GET", "/v1/speakers/tess", key=server.keys["read"])[2]
    assert doc["utterances"][0]["source"] == f"meeting.wav {label}.wav" and doc["utterances"][0]["duration_s"] > 1

    # A read key sees the lanes but is not offered the enrollment.
    page.get_by_role("button", name="Sign out").click()
    tab.sign_in("read")
    tab.go("timeline")
    page.get_by_label("Threshold (optional)").fill("1")
    page.get_by_label("Recording", exact=True).set_input_files(str(audio["meeting"]))
    expect(lanes.first).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name=re.compile("^Enroll"))).to_have_count(0)


def test_a_voice_is_enrolled_from_the_stretches_where_it_speaks_alone(tab):
    """With a segmentation model two voices may share a stretch (overlapping segments): the
    page's enrollment of one of them cuts only what no other voice overlaps."""
    page = tab.open().page
    segments = [
        {"start": 0.0, "end": 4.0, "label": "unknown-1"},
        {"start": 3.0, "end": 5.0, "label": "unknown-2"},  # over the end of unknown-1's first turn
        {"start": 6.0, "end": 9.0, "label": "unknown-1"},
        {"start": 7.0, "end": 7.5, "label": "unknown-2"},  # inside its second turn
        {"start": 10.0, "end": 11.0, "label": "unknown-2"},
    ]
    alone = "([segments, label]) => import('/static/lanes.js').then(m => m.aloneSpans(segments, label))"
    assert page.evaluate(alone, [segments, "unknown-1"]) == [
        {"start": 0.0, "end": 3.0},
        {"start": 6.0, "end": 7.0},
        {"start": 7.5, "end": 9.0},
    ]
    assert page.evaluate(alone, [segments, "unknown-2"]) == [{"start": 4.0, "end": 5.0}, {"start": 10.0, "end": 11.0}]
    assert page.evaluate(alone, [segments[:2] + [{"start": 1.0, "end": 2.0, "label": "unknown-3"}], "unknown-3"]) == []


def test_a_lanes_segments_are_one_tab_stop_walked_with_the_arrow_keys(tab):
    """A long meeting's hundreds of turns were each a Tab stop: a lane's segments are one,
    the arrow keys (and Home, End) move between them, and Tab comes back to the last one."""
    page = tab.open().page
    expect(page.locator("main h1")).to_have_text("Sign in")  # the view has taken the focus it takes
    expect(page.locator("main h1")).to_be_focused()
    page.evaluate(
        """() => import('/static/lanes.js').then((m) => {
          window.seeks = [];
          const lanes = new m.Lanes({ caption: "Voices", onseek: (t) => window.seeks.push(t) });
          lanes.update([
            { start: 0, end: 2, label: "unknown-1" }, { start: 3, end: 4, label: "unknown-2" },
            { start: 5, end: 6, label: "unknown-1" }, { start: 7, end: 8, label: "unknown-1" },
          ], 10);
          document.body.prepend(lanes.el);
          const after = document.createElement("button");
          after.textContent = "after";
          lanes.el.after(after);
        })"""
    )
    first = page.get_by_role("button", name="Play unknown-1, 0.0 s to 2.0 s")
    first.focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("button", name="Play unknown-1, 5.0 s to 6.0 s")).to_be_focused()
    page.keyboard.press("End")
    last = page.get_by_role("button", name="Play unknown-1, 7.0 s to 8.0 s")
    expect(last).to_be_focused()
    page.keyboard.press("Enter")
    assert page.evaluate("window.seeks") == [7]
    page.keyboard.press("Tab")  # out of the lane: to the next voice's one stop
    expect(page.get_by_role("button", name="Play unknown-2, 3.0 s to 4.0 s")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="after")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")  # back into the first lane: where the user left it
    expect(last).to_be_focused()
    page.keyboard.press("Home")
    expect(first).to_be_focused()
    group = page.get_by_role("group", name="Voice unknown-1")
    assert "Arrow keys" in page.evaluate(
        "g => document.getElementById(g.getAttribute('aria-describedby')).textContent", group.element_handle()
    )


# ---- settings -----------------------------------------------------------------------------------
def test_settings_threshold_keys_shown_once_revoke_and_the_audit_log(tab, server):
    page = tab.sign_in("admin").page
    tab.go("settings")
    before = server.call("GET", "/v1/threshold", key=server.keys["read"])[2]["threshold"]
    threshold = page.get_by_label("Decision threshold")
    expect(threshold).to_have_value(str(before))
    expect(threshold).to_have_attribute("min", "0")  # the service's range: a negative cosine is refused
    threshold.fill("-0.5")  # out of range: the page says why, with the range
    page.get_by_role("button", name="Save threshold").click()
    expect(tab.main().locator(".error").first).to_contain_text("threshold -0.5 is not a cosine score from 0 to 1")
    threshold.fill(str(before))
    page.get_by_role("button", name="Save threshold").click()
    expect(tab.main()).to_contain_text(f"Threshold is now {before}")
    expect(tab.main()).to_contain_text("raw cosine scores")

    page.get_by_label("Key name").fill("kiosk")
    page.get_by_label("Scope").select_option("read")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret of kiosk")
    expect(secret).to_have_value(re.compile(r"^sdb_"))
    key = secret.input_value()
    assert server.call("GET", "/v1/whoami", key=key)[2]["key"] == "kiosk"
    page.get_by_role("button", name="Done, hide it").click()
    expect(page.get_by_label("Secret of kiosk")).to_have_count(0)
    assert key not in page.content()  # shown once

    page.get_by_role("button", name="Revoke key kiosk").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Revoke key kiosk?")
    dialog.get_by_role("button", name="Revoke kiosk").click()
    keys = page.get_by_role("region", name="Keys")
    expect(keys.get_by_role("row", name=re.compile("kiosk"))).to_contain_text("revoked")
    assert server.call("GET", "/v1/whoami", key=key)[0] == 401

    audit = page.get_by_role("region", name="Audit entries")
    expect(audit.get_by_role("row", name=re.compile("key-create.*kiosk"))).to_have_count(1)
    expect(audit.get_by_role("row", name=re.compile("key-revoke.*kiosk"))).to_have_count(1)


def test_settings_turn_normalisation_on_with_a_cohort_and_off_again(tab, server, tmp_path):
    cohort = [
        write(tmp_path / f"c{i}.wav", speech(95 + 21 * i, 1.5, seed=60 + i, tract=0.8 + i / 25)) for i in range(12)
    ]
    page = tab.sign_in("admin").page
    tab.go("settings")
    expect(page.locator("#norm-state")).to_contain_text("raw cosine scores")
    expect(page.get_by_role("button", name="Turn normalisation off")).to_be_hidden()
    page.get_by_label("Cohort recordings").set_input_files(cohort[:3])  # too few: the service says so
    page.get_by_role("button", name="Turn normalisation on").click()
    expect(tab.main().locator(".error").first).to_contain_text("a cohort needs at least 10 recordings")
    assert server.call("GET", "/v1/info", key=server.keys["read"])[2]["norm"] is None

    # The tiny random model scores every voice alike: at threshold 1 none is set aside as enrolled.
    assert server.call("PUT", "/v1/threshold", key=server.keys["admin"], body={"threshold": 1.0})[0] == 200
    page.get_by_label("Cohort recordings").set_input_files(cohort)
    page.get_by_label("Top N").fill("5")
    page.get_by_role("button", name="Turn normalisation on").click()
    expect(tab.main()).to_contain_text("Normalisation is on: AS-norm, top 5")
    expect(tab.main()).to_contain_text("calibrate it again")
    expect(page.locator("#norm-state")).to_contain_text("the threshold is on the as-norm scale")
    info = server.call("GET", "/v1/info", key=server.keys["read"])[2]
    assert info["norm"]["top_n"] == 5 and info["threshold_scale"] == "as-norm"
    expect(page.get_by_label("Decision threshold")).to_have_value(f"{info['threshold']:g}")

    page.get_by_role("button", name="Turn normalisation off").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Turn normalisation off?")
    dialog.get_by_role("button", name="Turn normalisation off").click()
    expect(page.locator("#norm-state")).to_contain_text("raw cosine scores")
    assert server.call("GET", "/v1/info", key=server.keys["read"])[2]["threshold_scale"] == "cosine"
    audit = page.get_by_role("region", name="Audit entries")
    expect(audit.get_by_role("row", name=re.compile(r"\bnorm\b"))).to_have_count(2)


# ---- keyboard and screen readers ------------------------------------------------------------------
def test_the_keyboard_focus_stays_on_the_page_when_a_pressed_control_goes_busy_or_away(tab, server, audio):
    """A control pressed from the keyboard that was then disabled, hidden or rebuilt took the
    focus with it to <body>, and the user had to Tab again from the top of the page: live's
    start/stop button while it works, enroll's button while it sends, a clip's Remove, the new
    key's "Done, hide it", a key's Revoke, a timeline voice's Enroll. The focus now stays on the
    button or goes to what took its place."""
    page = tab.sign_in("admin").page
    tab.go("live")
    page.get_by_role("button", name="Start listening").focus()
    page.keyboard.press("Enter")
    stop = page.get_by_role("button", name="Stop listening")
    expect(stop).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Start listening")).to_be_focused(timeout=30_000)

    tab.go("enroll")
    page.get_by_label("Audio files").set_input_files([str(audio["ann"]), str(audio["ben"])])
    page.get_by_role("button", name="Remove ann.wav").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Remove ben.wav")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Audio files")).to_be_focused()
    page.get_by_label("Audio files").set_input_files(str(audio["ann"]))
    page.get_by_label("Speaker name").fill("kim")
    enroll = page.get_by_role("button", name="Enroll", exact=True)
    enroll.focus()
    page.keyboard.press("Enter")
    expect(enroll).to_have_attribute("aria-disabled", "true")  # busy, and still focused
    expect(enroll).to_be_focused()
    expect(tab.main().locator("pre.notes")).to_contain_text("created kim")
    expect(enroll).to_be_focused()

    tab.go("settings")
    page.get_by_label("Key name").fill("desk2")
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("button", name="Done, hide it").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Create key")).to_be_focused()
    page.get_by_role("button", name="Revoke key desk2").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()  # the safe choice
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("button", name="Revoke key desk2")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Revoke desk2")).to_be_focused()
    page.keyboard.press("Enter")
    keys = page.get_by_role("region", name="Keys", exact=True)
    expect(keys.get_by_role("row", name=re.compile("desk2"))).to_contain_text("revoked")
    expect(keys).to_be_focused()

    tab.go("timeline")
    page.get_by_label("Threshold (optional)").fill("1")
    page.get_by_label("Recording", exact=True).set_input_files(str(audio["meeting"]))
    lane = page.locator(".lane").first
    expect(lane).to_be_visible(timeout=30_000)
    label = lane.get_attribute("data-label")
    page.get_by_label(f"Name {label}").fill("tam")
    page.get_by_role("button", name=f"Enroll {label}").focus()
    page.keyboard.press("Enter")
    expect(lane.locator(".lane-name")).to_be_focused(timeout=30_000)
    expect(lane.locator(".lane-name")).to_have_text("tam")


def test_a_view_left_while_it_loads_leaves_the_focus_and_the_page_of_the_next_one_alone(tab, server):
    """A view that was left before its data came (a slow GET) still focused the page's heading
    when it came, taking the focus from where the user had moved it in the next view, and
    appended its content to the next view."""
    page = tab.sign_in("read").page
    page.wait_for_load_state("networkidle")
    page.evaluate(
        """() => { const f = window.fetch; window.fetch = (u, o) => String(u).includes('/v1/speakers/bob')
           ? new Promise(r => setTimeout(r, 1500)).then(() => f(u, o)) : f(u, o); }"""
    )
    page.evaluate("location.hash = '#/speakers/bob'")
    tab.go("live")
    start = page.get_by_role("button", name="Start listening")
    start.focus()
    page.wait_for_timeout(2500)  # bob's page has had its answer
    expect(start).to_be_focused()
    expect(tab.main()).not_to_contain_text("Utterances")
    expect(page).to_have_title("Live · speakerdb")


# ---- accessibility, phone width, dark, screenshots -----------------------------------------------
AXE_RUN = """async () => {
  const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}});
  return r.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
}"""


LANE_CONTRAST = """() => {
  const lum = (rgb) => {
    const c = rgb.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map((x) => Number(x) / 255)
      .map((x) => (x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4));
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const out = [];
  for (let i = 0; i < 8; i++) {
    const seg = document.createElement("span");
    seg.className = "seg";
    const track = document.createElement("div");
    track.className = "track";
    const lane = document.createElement("div");
    lane.className = `lane c${i}`;
    track.append(seg);
    lane.append(track);
    document.body.append(lane);
    const [a, b] = [lum(getComputedStyle(seg).backgroundColor), lum(getComputedStyle(track).backgroundColor)];
    out.push((Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05));
    lane.remove();
  }
  return out;
}"""


LANE_COLOURS = """() => [...Array(8).keys()].map((i) => {
  const lane = document.createElement("div");
  lane.className = `lane c${i}`;
  document.body.append(lane);
  const colour = getComputedStyle(lane).getPropertyValue("--lane-colour").trim();
  const probe = document.createElement("span");
  probe.style.color = colour;
  lane.append(probe);
  const rgb = getComputedStyle(probe).color.match(/\\d+/g).slice(0, 3).map(Number);
  lane.remove();
  return rgb;
})"""


def test_no_two_voices_share_a_colour_in_light_or_dark(tab):
    """Eight voices, eight colours a reader can tell apart: voices 2 and 7 were two reds
    (#d93025, #c5221f) in light, voices 1 and 6 two pale blues in dark. Every pair at least
    60 apart in RGB (0-255 each)."""
    page = tab.open().page
    expect(page.locator("main h1")).to_have_text("Sign in")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        colours = page.evaluate(LANE_COLOURS)
        nearest = min(
            (math.dist(colours[i], colours[j]), i, j) for i in range(len(colours)) for j in range(i + 1, len(colours))
        )
        assert len(colours) == 8 and nearest[0] >= 60, (scheme, nearest, colours)


def test_every_voices_colour_stands_out_from_its_lane_in_light_and_dark(tab):
    """A segment is a graphic that carries meaning (there is speech): at least 3:1 against its
    lane (WCAG 1.4.11), in light and in dark; the fourth voice's orange was 2.6:1 in light."""
    page = tab.open().page
    expect(page.locator("main h1")).to_have_text("Sign in")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        ratios = page.evaluate(LANE_CONTRAST)
        assert len(ratios) == 8 and min(ratios) >= 3, (scheme, [round(r, 2) for r in ratios])


def test_every_view_has_no_axe_violations_in_light_and_dark_fits_a_phone_and_is_photographed(
    browser, server, audio, shots
):
    """axe-core (vendored under tests/vendor) finds no WCAG 2.1 A/AA violation in any view,
    light or dark; at 390 px nothing scrolls sideways; each view is saved at 1280 x 800."""
    _enroll(server, "zara", audio["ann"])
    # The audit script is injected into the page: only this context lets it past the CSP.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = context.new_page()
    tab = Tab.__new__(Tab)
    tab.page, tab.server = page, server
    page.goto(server.url + "/")
    expect(page.locator("main h1")).to_have_text("Sign in")

    def audit(name: str) -> None:
        page.add_script_tag(path=str(AXE))
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            violations = page.evaluate(AXE_RUN)
            assert violations == [], (name, scheme, json.dumps(violations, indent=1))
        page.emulate_media(color_scheme="light")

    audit("signin")
    page.screenshot(path=str(shots / "signin.png"))
    tab.sign_in("admin")
    for view in (*VIEWS, "speakers/zara"):
        tab.go(view)
        page.wait_for_load_state("networkidle")
        if view == "timeline":  # with lanes to show
            page.get_by_label("Threshold (optional)").fill("1")
            page.get_by_label("Recording", exact=True).set_input_files(str(audio["meeting"]))
            expect(page.locator(".lane").first).to_be_visible(timeout=30_000)
        if view == "identify":
            page.get_by_label("Recordings to identify").set_input_files(str(audio["ann"]))
            expect(page.locator("article.answer")).to_have_count(1)
        audit(view)
        page.screenshot(path=str(shots / f"{view.replace('/', '-')}.png"))
        for width in (390, 320):  # a phone; 1280 px at 400 % zoom (WCAG 1.4.10)
            page.set_viewport_size({"width": width, "height": 844})
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (view, width, overflow)
        page.set_viewport_size({"width": 1280, "height": 800})
    # Keyboard: the skip link, then the views by Tab from the top of the page.
    page.locator("#skip").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.locator("#skip").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Speakers"
    page.keyboard.press("Enter")
    expect(page.locator("main h1")).to_have_text("Speakers")
    expect(page.locator("main h1")).to_be_focused()
    context.close()
    assert {f"{v}.png" for v in VIEWS} <= {p.name for p in shots.glob("*.png")}
