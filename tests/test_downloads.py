"""Downloads, all offline: kagglehub's HTTP transport and urllib are replaced by fakes.

The checkpoint tests run the real kagglehub and fake only `requests.Session.send`,
the one place it touches the network, so its cache layout, completion markers
and error types are the real ones. Every test runs with HOME, the Kaggle config
folder and the kagglehub cache inside its own tmp_path.
"""

from __future__ import annotations

import base64
import email.message
import hashlib
import io
import json
import os
import pathlib
import socket
import urllib.error
import urllib.request

import kagglehub
import kagglehub.config
import pytest
import requests
from sentencepiece import sentencepiece_model_pb2

from solutions import downloads, tokenizer
from solutions.configs import get_checkpoint
from solutions.data import read_jsonl
from solutions.downloads import CHECKPOINT_DIR_ENV, DownloadError

NAME = "paligemma2-3b-pt-224"
HANDLE = "google/paligemma-2/jax/paligemma2-3b-pt-224/1"
FILENAME = "paligemma2-3b-pt-224.b16.npz"
CHECKPOINT_BYTES = b"PK\x03\x04 pretend npz " * 1000
# kagglehub 1.0.3's layout (kagglehub/cache.py), spelled out for this handle.
CACHED = "models/google/paligemma-2/jax/paligemma2-3b-pt-224/1/paligemma2-3b-pt-224.b16.npz"
MARKER = (
    "models/google/paligemma-2/jax/paligemma2-3b-pt-224/.complete/1/"
    "paligemma2-3b-pt-224.b16.npz.complete"
)


def _network_used(*args, **kwargs):
    raise AssertionError(f"network used: {args[1:2]}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No credentials, an empty kagglehub cache in tmp_path, and no network at all."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    for name in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "KAGGLE_API_ENVIRONMENT",
        "KAGGLE_KERNEL_RUN_TYPE",
        CHECKPOINT_DIR_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(kagglehub.config, "_kaggle_credentials", None)
    monkeypatch.setattr(requests.Session, "send", _network_used)
    monkeypatch.setattr(urllib.request, "urlopen", _network_used)


@pytest.fixture
def kaggle_calls(monkeypatch):
    """Records the arguments of every kagglehub.model_download call, then runs the real one."""
    calls = []
    real = kagglehub.model_download

    def spy(handle, path=None, **kwargs):
        calls.append({"handle": handle, "path": path, **kwargs})
        return real(handle, path, **kwargs)

    monkeypatch.setattr(kagglehub, "model_download", spy)
    return calls


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "learner")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")


def kaggle_answers(monkeypatch, answer):
    """Makes Kaggle's API answer each request with `answer(request)` (a Response or an error)."""

    def send(session, request, **kwargs):
        if isinstance(answer, Exception):
            raise answer
        return answer(request)

    monkeypatch.setattr(requests.Session, "send", send)


def file_response(request) -> requests.Response:
    """What Kaggle's download endpoint returns after its redirect to storage."""
    response = requests.Response()
    response.status_code = 200
    response.url = f"https://storage.googleapis.com/kaggle-models/{FILENAME}"
    response.request = request
    response.headers["Content-Type"] = "application/octet-stream"
    response.headers["Content-Length"] = str(len(CHECKPOINT_BYTES))
    response.raw = io.BytesIO(CHECKPOINT_BYTES)
    return response


def error_answer(status: int):
    def answer(request) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response.url = request.url
        response.request = request
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps({"code": status, "message": "refused"}).encode()
        return response

    return answer


def assert_never_forced(calls):
    assert calls, "kagglehub.model_download was not called"
    for call in calls:
        assert not call.get("force_download"), call


# --- the checkpoint ------------------------------------------------------------------------------


def test_kaggle_cache_path_is_kagglehubs_layout(tmp_path):
    assert downloads.kaggle_cache_path(NAME) == tmp_path / "kagglehub" / CACHED


def test_completed_cache_entry_is_used_offline(tmp_path, kaggle_calls):
    cache = tmp_path / "kagglehub"
    (cache / CACHED).parent.mkdir(parents=True)
    (cache / CACHED).write_bytes(CHECKPOINT_BYTES)
    (cache / MARKER).parent.mkdir(parents=True)
    (cache / MARKER).touch()

    assert downloads.download_checkpoint(NAME) == cache / CACHED
    assert kaggle_calls == []
    # kagglehub itself resolves the versioned handle from its cache without network, too.
    assert kagglehub.model_download(HANDLE, path=FILENAME) == str(cache / CACHED)


def test_cache_file_without_marker_is_not_trusted(monkeypatch, tmp_path, kaggle_calls):
    partial = tmp_path / "kagglehub" / CACHED  # what an interrupted kagglehub transfer leaves
    partial.parent.mkdir(parents=True)
    partial.write_bytes(CHECKPOINT_BYTES[:100])
    kaggle_answers(monkeypatch, requests.ConnectionError("Failed to resolve 'api.kaggle.com'"))
    with pytest.raises(DownloadError, match="Could not reach Kaggle"):
        downloads.download_checkpoint(NAME)
    assert_never_forced(kaggle_calls)
    assert partial.read_bytes() == CHECKPOINT_BYTES[:100]  # kept for kagglehub to resume


@pytest.mark.parametrize("via", ["env", "argument"])
def test_file_in_checkpoint_folder_is_used_offline(monkeypatch, tmp_path, kaggle_calls, via):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / FILENAME).write_bytes(CHECKPOINT_BYTES)
    if via == "env":
        monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(folder))
        found = downloads.download_checkpoint(NAME)
    else:
        monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path / "elsewhere"))
        found = downloads.download_checkpoint(get_checkpoint(NAME), cache_dir=folder)
    assert found == folder / FILENAME
    assert kaggle_calls == []


def test_download_into_kagglehub_cache_then_offline(monkeypatch, tmp_path, kaggle_calls):
    kaggle_answers(monkeypatch, file_response)
    path = downloads.download_checkpoint(NAME)
    assert path == tmp_path / "kagglehub" / CACHED
    assert path.read_bytes() == CHECKPOINT_BYTES
    assert kaggle_calls == [{"handle": HANDLE, "path": FILENAME}]

    monkeypatch.setattr(requests.Session, "send", _network_used)
    assert downloads.download_checkpoint(NAME) == path
    assert len(kaggle_calls) == 1


def test_download_into_folder_is_atomic_and_never_forced(monkeypatch, tmp_path, kaggle_calls):
    folder = tmp_path / "checkpoints"
    kaggle_answers(monkeypatch, file_response)
    path = downloads.download_checkpoint(NAME, cache_dir=folder)
    assert path == folder / FILENAME
    assert path.read_bytes() == CHECKPOINT_BYTES
    assert os.listdir(folder) == [FILENAME]  # the staging folder is gone
    assert_never_forced(kaggle_calls)
    assert kaggle_calls[0]["path"] == FILENAME


def test_transfer_cut_midway_leaves_no_file(monkeypatch, tmp_path):
    folder = tmp_path / "checkpoints"

    def cut_midway(handle, path=None, *, output_dir=None, **kwargs):
        partial = pathlib.Path(output_dir) / path
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(CHECKPOINT_BYTES[:500])
        raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")

    monkeypatch.setattr(kagglehub, "model_download", cut_midway)
    with pytest.raises(DownloadError, match="no network"):
        downloads.download_checkpoint(NAME, cache_dir=folder)
    assert os.listdir(folder) == []


CREDENTIALS_PHRASES = [
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "~/.kaggle/kaggle.json",
    "https://www.kaggle.com/settings",
]


@pytest.mark.parametrize(
    "has_credentials, answer, phrases",
    [
        (False, error_answer(401), CREDENTIALS_PHRASES),
        (False, error_answer(403), CREDENTIALS_PHRASES),
        (True, error_answer(401), ["rejected", "https://www.kaggle.com/settings"]),
        (True, error_answer(403), ["license", "https://www.kaggle.com/models/google/paligemma-2"]),
        (True, error_answer(404), ["404", HANDLE]),
        (True, error_answer(500), ["500", "try again later"]),
        (False, requests.ConnectionError("Failed to resolve 'api.kaggle.com'"), ["no network"]),
        (True, requests.ConnectTimeout("timed out"), ["no network", "ConnectTimeout"]),
    ],
)
def test_failures_say_what_to_do(
    request, monkeypatch, tmp_path, kaggle_calls, has_credentials, answer, phrases
):
    if has_credentials:
        request.getfixturevalue("credentials")
    kaggle_answers(monkeypatch, answer)
    folder = tmp_path / "checkpoints"
    with pytest.raises(DownloadError) as caught:
        downloads.download_checkpoint(NAME, cache_dir=folder)
    for phrase in [*phrases, f"at {folder / FILENAME}"]:
        assert phrase in str(caught.value)
    assert_never_forced(kaggle_calls)


def test_paligemma1_license_page(monkeypatch, credentials):
    kaggle_answers(monkeypatch, error_answer(403))
    with pytest.raises(DownloadError, match=r"https://www\.kaggle\.com/models/google/paligemma,"):
        downloads.download_checkpoint("paligemma-3b-pt-224")


def test_without_a_folder_the_message_names_the_env_var(monkeypatch):
    kaggle_answers(monkeypatch, requests.ConnectionError("Network is unreachable"))
    with pytest.raises(DownloadError, match=f"\\${CHECKPOINT_DIR_ENV}/{FILENAME}"):
        downloads.download_checkpoint(NAME)


def test_unreadable_kaggle_json(tmp_path):
    creds = tmp_path / "home" / ".kaggle" / "kaggle.json"
    creds.parent.mkdir()
    creds.write_text("{not json")
    with pytest.raises(DownloadError, match="username") as caught:
        downloads.download_checkpoint(NAME)
    assert str(creds) in str(caught.value)


def test_unknown_checkpoint_lists_the_known_ones():
    with pytest.raises(KeyError, match=NAME):
        downloads.download_checkpoint("paligemma-7b")


# --- fake Cloud Storage for the tokenizer and longcap100 -----------------------------------------


class FakeResponse:
    """An urlopen response: headers like Cloud Storage's, optionally failing partway."""

    def __init__(self, data: bytes, *, md5_of: bytes | None = None, length=None, fail_at=None):
        self._body = io.BytesIO(data)
        self._fail_at = fail_at
        self.headers = email.message.Message()
        self.headers["Content-Length"] = str(len(data) if length is None else length)
        self.headers["x-goog-hash"] = "crc32c=AAAAAA=="
        digest = hashlib.md5(data if md5_of is None else md5_of).digest()
        self.headers["x-goog-hash"] = "md5=" + base64.b64encode(digest).decode()

    def read(self, size: int) -> bytes:
        position = self._body.tell()
        if self._fail_at is not None:
            if position >= self._fail_at:
                raise ConnectionResetError("Connection reset by peer")
            size = min(size, self._fail_at - position)
        return self._body.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def serve(monkeypatch, files: dict) -> list[str]:
    """Makes urlopen answer from `files` (url -> bytes, FakeResponse or exception); logs urls."""
    requested = []

    def urlopen(url, timeout=None):
        requested.append(url)
        answer = files[url]
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, FakeResponse) else FakeResponse(answer)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def http_error(url: str, code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError(url, code, "Forbidden", email.message.Message(), None)


@pytest.fixture(scope="session")
def paligemma_like_tokenizer(tmp_path_factory) -> bytes:
    """A SentencePiece model with PaliGemma's full layout: 257,152 pieces, <loc0000> at 256,000."""
    path = tmp_path_factory.mktemp("spm") / "small.model"
    tokenizer.train_tokenizer(
        ["a cat on a mat", "two dogs in the park"] * 10,
        path,
        num_word_pieces=64,
        with_loc_seg=False,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    user_defined = proto.SentencePiece.USER_DEFINED
    for i in range(len(proto.pieces), downloads.FIRST_LOC_ID):
        proto.pieces.add(piece=f"<unused{i}>", score=0.0, type=user_defined)
    for piece in (*tokenizer.LOC_TOKENS, *tokenizer.SEG_TOKENS):
        proto.pieces.add(piece=piece, score=0.0, type=user_defined)
    return proto.SerializeToString()


@pytest.fixture(scope="session")
def course_tokenizer(tmp_path_factory) -> bytes:
    """The course's own small tokenizer: right special ids, far fewer pieces."""
    path = tmp_path_factory.mktemp("spm") / "course.model"
    tokenizer.train_tokenizer(["a cat on a mat", "two dogs"] * 10, path, num_word_pieces=64)
    return path.read_bytes()


# --- the tokenizer -------------------------------------------------------------------------------


def test_tokenizer_download_records_sha256_then_works_offline(
    monkeypatch, tmp_path, paligemma_like_tokenizer
):
    requested = serve(monkeypatch, {downloads.TOKENIZER_URL: paligemma_like_tokenizer})
    path = downloads.download_tokenizer(tmp_path / "tok")
    assert path == tmp_path / "tok" / "paligemma_tokenizer.model"
    assert path.read_bytes() == paligemma_like_tokenizer
    assert sorted(os.listdir(path.parent)) == [path.name, path.name + ".sha256"]
    recorded = (path.parent / (path.name + ".sha256")).read_text().split()[0]
    assert recorded == hashlib.sha256(paligemma_like_tokenizer).hexdigest()

    monkeypatch.setattr(urllib.request, "urlopen", _network_used)
    assert downloads.download_tokenizer(tmp_path / "tok") == path
    assert requested == [downloads.TOKENIZER_URL]


def test_recorded_sha256_catches_a_corrupted_tokenizer(
    monkeypatch, tmp_path, paligemma_like_tokenizer
):
    serve(monkeypatch, {downloads.TOKENIZER_URL: paligemma_like_tokenizer})
    path = downloads.download_tokenizer(tmp_path)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="SHA-256") as caught:
        downloads.download_tokenizer(tmp_path)
    assert "corrupted" in str(caught.value)
    assert str(path) + ".sha256" in str(caught.value)


@pytest.mark.parametrize(
    "answer, phrase",
    [
        (FakeResponse(b"x" * 3_000_000, fail_at=1 << 20), "Connection reset"),
        (FakeResponse(b"x" * 1000, length=5000), "stopped after 1000 of 5000 bytes"),
        (FakeResponse(b"x" * 1000, md5_of=b"y"), "corrupted"),
        (FakeResponse(b"<html>Sign in to the proxy</html>"), "not a SentencePiece model"),
    ],
)
def test_failed_tokenizer_transfer_leaves_nothing(monkeypatch, tmp_path, answer, phrase):
    serve(monkeypatch, {downloads.TOKENIZER_URL: answer})
    with pytest.raises(DownloadError, match=phrase):
        downloads.download_tokenizer(tmp_path / "tok")
    assert os.listdir(tmp_path / "tok") == []


def test_a_tokenizer_without_paligemmas_layout_is_refused(monkeypatch, tmp_path, course_tokenizer):
    serve(monkeypatch, {downloads.TOKENIZER_URL: course_tokenizer})
    with pytest.raises(DownloadError, match="not PaliGemma's tokenizer") as caught:
        downloads.download_tokenizer(tmp_path / "tok")
    assert "PaliGemma has 257152" in str(caught.value)
    assert "<loc0000> has id" in str(caught.value)
    assert os.listdir(tmp_path / "tok") == []


@pytest.mark.parametrize("pinned_matches", [True, False])
def test_pinned_sha256(monkeypatch, tmp_path, paligemma_like_tokenizer, pinned_matches):
    digest = hashlib.sha256(paligemma_like_tokenizer).hexdigest()
    monkeypatch.setattr(downloads, "KNOWN_TOKENIZER_SHA256", digest if pinned_matches else "0" * 64)
    serve(monkeypatch, {downloads.TOKENIZER_URL: paligemma_like_tokenizer})
    folder = tmp_path / "tok"
    if pinned_matches:
        assert downloads.download_tokenizer(folder).read_bytes() == paligemma_like_tokenizer
    else:
        with pytest.raises(DownloadError, match=f"SHA-256 {digest}"):
            downloads.download_tokenizer(folder)
        assert os.listdir(folder) == []


def test_tokenizer_put_there_by_hand_is_checked_once(
    tmp_path, paligemma_like_tokenizer, course_tokenizer
):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder, data in ((good, paligemma_like_tokenizer), (bad, course_tokenizer)):
        folder.mkdir()
        (folder / downloads.TOKENIZER_FILENAME).write_bytes(data)
    path = downloads.download_tokenizer(good)
    assert (good / (path.name + ".sha256")).is_file()
    with pytest.raises(DownloadError, match="not PaliGemma's tokenizer"):
        downloads.download_tokenizer(bad)
    assert not (bad / (path.name + ".sha256")).exists()


@pytest.mark.parametrize(
    "error, phrases",
    [
        (http_error(downloads.TOKENIZER_URL, 403), ["HTTP 403", "needs no login", "proxy"]),
        (http_error(downloads.TOKENIZER_URL, 404), ["HTTP 404"]),
        (urllib.error.URLError(socket.gaierror(-3, "name resolution")), ["no network"]),
        (TimeoutError("timed out"), ["no network"]),
    ],
)
def test_tokenizer_failures_say_what_to_do(monkeypatch, tmp_path, error, phrases):
    serve(monkeypatch, {downloads.TOKENIZER_URL: error})
    path = tmp_path / downloads.TOKENIZER_FILENAME
    with pytest.raises(DownloadError) as caught:
        downloads.download_tokenizer(tmp_path)
    for phrase in [*phrases, f"gsutil cp gs://big_vision/paligemma_tokenizer.model {path}"]:
        assert phrase in str(caught.value)


# --- longcap100 ----------------------------------------------------------------------------------


def jsonl(*images: str) -> bytes:
    lines = [json.dumps({"image": i, "prefix": "caption en", "suffix": f"{i} x"}) for i in images]
    return "\n".join(lines).encode() + b"\n"


def longcap_bucket(**overrides) -> dict:
    base = downloads.LONGCAP100_URL
    files = {
        base + "data_train90.jsonl": jsonl("1.jpg", "2.jpg"),
        base + "data_val10.jsonl": jsonl("3.jpg"),
        base + "1.jpg": b"jpeg one",
        base + "2.jpg": b"jpeg two",
        base + "3.jpg": b"jpeg three",
    }
    files.update({base + name: value for name, value in overrides.items()})
    return files


def test_longcap100_downloads_everything_then_works_offline(monkeypatch, tmp_path):
    serve(monkeypatch, longcap_bucket())
    root = downloads.download_longcap100(tmp_path / "longcap100")
    assert sorted(os.listdir(root)) == ["1.jpg", "2.jpg", "3.jpg", *downloads.LONGCAP100_SPLITS]
    examples = read_jsonl(root / "data_train90.jsonl")
    assert [e.image_path.read_bytes() for e in examples] == [b"jpeg one", b"jpeg two"]

    monkeypatch.setattr(urllib.request, "urlopen", _network_used)
    assert downloads.download_longcap100(root) == root


def test_longcap100_resumes_after_a_failure(monkeypatch, tmp_path):
    refused = urllib.error.URLError(ConnectionRefusedError("refused"))
    serve(monkeypatch, longcap_bucket(**{"2.jpg": refused}))
    root = tmp_path / "longcap100"
    with pytest.raises(DownloadError, match="no network"):
        downloads.download_longcap100(root)
    assert sorted(os.listdir(root)) == ["1.jpg", *downloads.LONGCAP100_SPLITS]

    requested = serve(monkeypatch, longcap_bucket())
    downloads.download_longcap100(root)
    assert requested == [downloads.LONGCAP100_URL + "2.jpg", downloads.LONGCAP100_URL + "3.jpg"]


def test_longcap100_without_network_leaves_no_empty_folder(monkeypatch, tmp_path):
    refused = urllib.error.URLError(ConnectionRefusedError("refused"))
    serve(monkeypatch, longcap_bucket(**{"data_train90.jsonl": refused}))
    root = tmp_path / "deep" / "longcap100"
    with pytest.raises(DownloadError, match="no network"):
        downloads.download_longcap100(root)
    assert not root.exists() and root.parent.is_dir()  # the parent it made may stay


def test_longcap100_refuses_paths_outside_the_folder(monkeypatch, tmp_path):
    root = tmp_path / "longcap100"
    serve(monkeypatch, longcap_bucket(**{"data_train90.jsonl": jsonl("1.jpg", "../evil.jpg")}))
    with pytest.raises(DownloadError, match=r"data_train90\.jsonl:2: image path '\.\./evil\.jpg'"):
        downloads.download_longcap100(root)
    assert not (tmp_path / "evil.jpg").exists()


def test_longcap100_bucket_refusal(monkeypatch, tmp_path):
    url = downloads.LONGCAP100_URL + "data_train90.jsonl"
    serve(monkeypatch, {url: http_error(url, 403)})
    with pytest.raises(DownloadError) as caught:
        downloads.download_longcap100(tmp_path)
    for phrase in ["needs no login", f"gsutil -m cp -n 'gs://longcap100/*' {tmp_path}/"]:
        assert phrase in str(caught.value)
