"""Graded checks for lesson 2 (downloads): one test per behaviour, named test_ex2_K_<what>."""

import contextlib
import hashlib
import os
import pathlib
import tracemalloc
from unittest import mock

import numpy as np
import pytest

from solutions.configs import Checkpoint, get_checkpoint
from tests.grading import expect_equal, expect_raises, expect_true

LESSON = 2
SOLUTIONS = ("solutions.downloads", "solutions.files")
pytestmark = pytest.mark.lesson2


@contextlib.contextmanager
def kagglehub_cache(value: str | None):
    """Sets (or, with None, removes) KAGGLEHUB_CACHE for the duration, then restores it."""
    saved = os.environ.pop("KAGGLEHUB_CACHE", None)
    if value is not None:
        os.environ["KAGGLEHUB_CACHE"] = value
    try:
        yield
    finally:
        os.environ.pop("KAGGLEHUB_CACHE", None)
        if saved is not None:
            os.environ["KAGGLEHUB_CACHE"] = saved


# ----------------------------------------------------------------------------- 2.1 cache path

LAYOUT_HINT = "cache/models/owner/model/framework/variation/version/filename"


def test_ex2_1_follows_kagglehubs_layout(impl, tmp_path):
    with kagglehub_cache(str(tmp_path / "cache")):
        got = impl.kaggle_cache_path("paligemma2-3b-pt-224")
    want = (
        tmp_path
        / "cache/models/google/paligemma-2/jax/paligemma2-3b-pt-224/1/paligemma2-3b-pt-224.b16.npz"
    )
    expect_true(isinstance(got, pathlib.Path), what="a pathlib.Path comes back", hint="Path(...)")
    expect_equal(got, want, what="cached path of paligemma2-3b-pt-224", hint=LAYOUT_HINT)


def test_ex2_1_takes_a_checkpoint_too(impl, tmp_path):
    made_up = Checkpoint("mine", {}, 224, "someone/my-model/flax/small/7", "weights.npz")
    with kagglehub_cache(str(tmp_path)):
        got_made_up = impl.kaggle_cache_path(made_up)
        got_pg1 = impl.kaggle_cache_path(get_checkpoint("paligemma-3b-pt-448"))
    expect_equal(
        got_made_up,
        tmp_path / "models/someone/my-model/flax/small/7/weights.npz",
        what="cached path of a Checkpoint with handle someone/my-model/flax/small/7",
        hint="use the Checkpoint's kaggle_handle and filename; look names up with get_checkpoint",
    )
    expect_equal(
        got_pg1,
        tmp_path / "models/google/paligemma/jax/paligemma-3b-pt-448/1/paligemma-3b-pt-448.f16.npz",
        what="cached path of paligemma-3b-pt-448",
        hint=LAYOUT_HINT,
    )


def test_ex2_1_default_cache_is_in_home(impl):
    with kagglehub_cache(None):
        got = impl.kaggle_cache_path("paligemma2-3b-pt-224")
    want = pathlib.Path.home() / ".cache/kagglehub/models/google/paligemma-2/jax"
    expect_equal(
        got,
        want / "paligemma2-3b-pt-224/1/paligemma2-3b-pt-224.b16.npz",
        what="cached path without KAGGLEHUB_CACHE",
        hint="os.environ.get('KAGGLEHUB_CACHE') falls back to ~/.cache/kagglehub",
    )


# ----------------------------------------------------------------------------- 2.2 sha256


def test_ex2_2_known_digests(impl, tmp_path):
    # FIPS 180-2's test vector for "abc", and the digest of no bytes at all.
    (tmp_path / "abc").write_bytes(b"abc")
    (tmp_path / "empty").write_bytes(b"")
    got_abc = impl.sha256_file(tmp_path / "abc")
    got_empty = impl.sha256_file(str(tmp_path / "empty"))
    expect_equal(
        got_abc,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        what="SHA-256 of a file holding b'abc'",
        hint="open the file in binary mode ('rb') and return digest.hexdigest()",
    )
    expect_equal(
        got_empty,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        what="SHA-256 of an empty file (path given as a str)",
        hint="open() accepts a str or a Path",
    )


def test_ex2_2_files_larger_than_a_chunk(impl, tmp_path):
    data = np.random.default_rng(0).bytes(3 * 2**20 + 123)
    (tmp_path / "big.bin").write_bytes(data)
    got = impl.sha256_file(tmp_path / "big.bin")
    expect_equal(
        got,
        hashlib.sha256(data).hexdigest(),
        what="SHA-256 of a 3 MiB file",
        hint="update the digest with every chunk until read() returns b''",
    )


def test_ex2_2_memory_stays_small_for_a_big_file(impl, tmp_path):
    size = 12 * 2**20
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * (size // 256))
    tracing = tracemalloc.is_tracing()  # already on under `python -X tracemalloc`
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        got = impl.sha256_file(tmp_path / "big.bin")
        peak_mib = (tracemalloc.get_traced_memory()[1] - before) / 2**20
    finally:
        if not tracing:
            tracemalloc.stop()
    expect_equal(
        got,
        hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest(),
        what="SHA-256 of a 12 MiB file",
        hint="update the digest with every chunk",
    )
    expect_true(
        peak_mib < 3,
        what=f"memory while hashing a 12 MiB file stays under 3 MiB (it peaked at {peak_mib:.1f})",
        hint="a checkpoint is gigabytes: never hold the whole file, read a fixed-size chunk "
        "(1 MiB) at a time in a loop until read returns no bytes",
    )


# ----------------------------------------------------------------------------- 2.3 write_atomic


def test_ex2_3_writes_text_and_bytes(impl, tmp_path):
    text_path = tmp_path / "new" / "folder" / "note.txt"
    got = impl.write_atomic(text_path, "héllo\n")
    impl.write_atomic(tmp_path / "blob.bin", b"\x00\xff")
    expect_equal(got, text_path, what="returned path", hint="return the final path as a Path")
    expect_equal(
        text_path.read_bytes(),
        "héllo\n".encode(),
        what="bytes of a str written (UTF-8)",
        hint="create missing parent folders; write str as UTF-8",
    )
    expect_equal((tmp_path / "blob.bin").read_bytes(), b"\x00\xff", what="bytes written")


def test_ex2_3_replaces_and_leaves_no_temporary_file(impl, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    impl.write_atomic(path, "new")
    expect_equal(path.read_text(), "new", what="content after replacing", hint="os.replace")
    expect_equal(
        sorted(os.listdir(tmp_path)),
        ["data.txt"],
        what="files in the folder",
        hint="the temporary file must be renamed onto the target, not left beside it",
    )


def test_ex2_3_a_failed_write_keeps_the_old_file(impl, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    # A lone surrogate cannot be encoded as UTF-8: the write fails partway.
    expect_raises(
        UnicodeEncodeError,
        impl.write_atomic,
        path,
        "half \ud800",
        what="writing text that cannot be encoded",
        hint="let the error propagate",
    )
    _expect_old_file_alone(
        path,
        "a failed write",
        hint="write to a temporary file beside the target; only a complete one replaces it",
    )


def _expect_old_file_alone(path, after: str, *, hint: str):
    """After a write that failed, the target holds its old text and nothing lies beside it."""
    expect_equal(path.read_text(), "old", what=f"content of the target after {after}", hint=hint)
    expect_equal(
        sorted(os.listdir(path.parent)),
        [path.name],
        what=f"files left after {after}",
        hint="remove the temporary file in a `finally:` block",
    )


def test_ex2_3_the_target_changes_only_by_a_rename(impl, tmp_path):
    """The writer dies just before it renames (the power goes): the old file must be whole."""
    path = tmp_path / "data.txt"
    path.write_text("old")
    renames = []

    def power_cut(source, target, *args, **kwargs):
        renames.append((pathlib.Path(source), pathlib.Path(target).resolve()))
        raise OSError("the power went out before the rename")

    with mock.patch.object(os, "replace", power_cut), mock.patch.object(os, "rename", power_cut):
        try:
            impl.write_atomic(path, "new content")
        except OSError:
            pass
    expect_true(
        renames and renames[0][1] == path.resolve(),
        what="the new content reaches the target by a rename onto it (os.replace)",
        hint="writing straight into the target leaves it half-written if the program dies "
        "midway: write a temporary file, then os.replace it onto the target",
    )
    expect_equal(
        renames[0][0].parent.resolve(),
        path.parent.resolve(),
        what="folder of the temporary file",
        hint="a rename is atomic only within one file system: put the temporary file in the "
        "target's own folder",
    )
    _expect_old_file_alone(
        path, "the failed rename", hint="nothing may touch the target before the rename"
    )


# ----------------------------------------------------------------------------- 2.4 failures


def test_ex2_4_without_credentials_the_key_is_missing(impl):
    for status in (401, 403):
        got = impl.kaggle_failure_kind(status, has_credentials=False)
        expect_equal(
            got,
            "credentials",
            what=f"kind of HTTP {status} without credentials",
            hint="an anonymous request for a gated model is refused: the key is what is missing",
        )


def test_ex2_4_with_credentials_401_and_403_differ(impl):
    table = {401: "rejected", 403: "license", 404: "missing"}
    for status, want in table.items():
        got = impl.kaggle_failure_kind(status, has_credentials=True)
        expect_equal(
            got,
            want,
            what=f"kind of HTTP {status} with credentials",
            hint="401: the key was not accepted; 403: the key is fine but the license is not "
            "accepted; 404: no such file",
        )
    expect_equal(
        impl.kaggle_failure_kind(404, has_credentials=False),
        "missing",
        what="kind of HTTP 404 without credentials",
        hint="only 401 and 403 point at missing credentials",
    )


def test_ex2_4_no_answer_is_the_network(impl):
    for has_credentials in (False, True):
        got = impl.kaggle_failure_kind(None, has_credentials=has_credentials)
        expect_equal(
            got,
            "network",
            what=f"kind when no HTTP answer came back (has_credentials={has_credentials})",
            hint="status None means the request never reached Kaggle",
        )


def test_ex2_4_other_statuses_are_the_servers(impl):
    for status in (429, 500, 503):
        got = impl.kaggle_failure_kind(status, has_credentials=True)
        expect_equal(
            got,
            "server",
            what=f"kind of HTTP {status}",
            hint="any status not in the table is Kaggle's trouble: 'server'",
        )
