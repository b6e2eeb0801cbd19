"""Lesson 2: fetching PaliGemma's files, and failing with advice when that is impossible.

Three things come from the internet, each from its own home:

    checkpoint  Kaggle, through kagglehub: gated, needs an API key and an accepted license
    tokenizer   big_vision's public bucket gs://big_vision (no login)
    longcap100  its public bucket gs://longcap100 (no login): 90 + 10 long captions

Every function here looks on disk first and touches the network only for what
is missing, so a machine with the files already in place works offline. When a
download fails, `DownloadError` says why and what to do instead, always naming
the exact path where a copy made elsewhere can be placed.

Files appear atomically: bytes go to a hidden temporary name in the same folder,
which is renamed only once the transfer is complete and checked, so a file at
its final path is always whole.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import kagglehub
import kagglehub.cache
import kagglehub.config
import requests  # kagglehub talks HTTP through requests, so its errors are requests' errors
import sentencepiece
import tqdm
from kagglehub.exceptions import DataCorruptionError
from kagglehub.handle import parse_model_handle

from solutions import tokenizer as tokenizer_lib
from solutions.configs import PALIGEMMA_VOCAB_SIZE, Checkpoint, get_checkpoint
from solutions.files import write_atomic

CHECKPOINT_DIR_ENV = "PALIGEMMA_CHECKPOINT_DIR"
KAGGLE_SETTINGS_URL = "https://www.kaggle.com/settings"

TOKENIZER_FILENAME = "paligemma_tokenizer.model"
TOKENIZER_GCS = "gs://big_vision/paligemma_tokenizer.model"
TOKENIZER_URL = "https://storage.googleapis.com/big_vision/paligemma_tokenizer.model"
# Google publishes no checksum for the tokenizer, so none is pinned: the file is
# checked by its layout instead (see `download_tokenizer`). Set this to a
# SHA-256 hex digest you trust to require exactly that file.
KNOWN_TOKENIZER_SHA256: str | None = None
FIRST_LOC_ID = 256_000  # Gemma's 256,000 word pieces come first

LONGCAP100_GCS = "gs://longcap100"
LONGCAP100_URL = "https://storage.googleapis.com/longcap100/"
LONGCAP100_SPLITS = ("data_train90.jsonl", "data_val10.jsonl")

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A file could not be fetched or verified; the message says what to do instead."""


# --- The checkpoint, from Kaggle -----------------------------------------------------------------


def kaggle_cache_path(name_or_checkpoint: str | Checkpoint) -> pathlib.Path:
    """Where kagglehub keeps a checkpoint's .npz once downloaded (present or not).

    The layout, for a versioned handle `owner/model/framework/variation/version`:

        $KAGGLEHUB_CACHE/models/owner/model/framework/variation/version/<filename>

    with `$KAGGLEHUB_CACHE` defaulting to ~/.cache/kagglehub. kagglehub counts
    the file as complete only once it has also written the marker
    `.../variation/.complete/version/<filename>.complete`.
    """
    checkpoint = _as_checkpoint(name_or_checkpoint)
    handle = parse_model_handle(checkpoint.kaggle_handle)
    return pathlib.Path(kagglehub.cache.get_cached_path(handle, checkpoint.filename))


def download_checkpoint(
    name_or_checkpoint: str | Checkpoint, *, cache_dir: str | os.PathLike | None = None
) -> pathlib.Path:
    """Returns the local path of a real PaliGemma checkpoint (.npz), downloading it if needed.

    Where the file lives:
      - `cache_dir` if given, else the folder named by $PALIGEMMA_CHECKPOINT_DIR if
        set: the file is `<folder>/<filename>`. A file found there is used as is,
        so a copy made on another machine can simply be put there.
      - otherwise kagglehub's own cache (`kaggle_cache_path`); a file there is used
        when kagglehub marked it complete.
    Either way an existing file is returned without any network access. If it
    is missing, kagglehub downloads it with the versioned handle, which needs
    Kaggle credentials and the license accepted on Kaggle. `force_download` is
    never used: offline, kagglehub would delete the cached copy before failing.

    Args:
      name_or_checkpoint: a name from `solutions.configs.CHECKPOINTS`, e.g.
        "paligemma2-3b-pt-224", or a `Checkpoint`.
      cache_dir: the folder to keep the file in (see above).
    Returns:
      The path of the .npz file.
    Raises:
      DownloadError: the file is not on disk and cannot be downloaded; the
        message says why (credentials, license, version, network) and where to
        put the file by hand.
    """
    checkpoint = _as_checkpoint(name_or_checkpoint)
    if (found := checkpoint_on_disk(checkpoint, cache_dir=cache_dir)) is not None:
        return found
    folder = _checkpoint_folder(cache_dir)
    has_credentials = _kaggle_credentials_found()
    try:
        if folder is None:
            # kagglehub writes into its cache in place, resumes a broken transfer
            # and marks the file complete at the end.
            return pathlib.Path(
                kagglehub.model_download(checkpoint.kaggle_handle, path=checkpoint.filename)
            )
        return _download_into(folder, checkpoint)
    except (requests.RequestException, DataCorruptionError) as err:
        raise _checkpoint_error(err, checkpoint, folder, has_credentials=has_credentials) from err


def checkpoint_on_disk(
    name_or_checkpoint: str | Checkpoint, *, cache_dir: str | os.PathLike | None = None
) -> pathlib.Path | None:
    """The path `download_checkpoint` would return without touching the network, or None.

    That is `<folder>/<filename>` when a folder is in use (`cache_dir`, else
    $PALIGEMMA_CHECKPOINT_DIR) and the file is there; otherwise kagglehub's
    cached copy when kagglehub marked it complete. None means a call to
    `download_checkpoint` would download.
    """
    checkpoint = _as_checkpoint(name_or_checkpoint)
    folder = _checkpoint_folder(cache_dir)
    if folder is not None:
        path = folder / checkpoint.filename
        return path if path.is_file() else None
    return _complete_in_kaggle_cache(checkpoint)


def _as_checkpoint(name_or_checkpoint: str | Checkpoint) -> Checkpoint:
    if isinstance(name_or_checkpoint, Checkpoint):
        return name_or_checkpoint
    return get_checkpoint(name_or_checkpoint)


def _checkpoint_folder(cache_dir: str | os.PathLike | None) -> pathlib.Path | None:
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    if os.environ.get(CHECKPOINT_DIR_ENV):
        return pathlib.Path(os.environ[CHECKPOINT_DIR_ENV]).expanduser()
    return None


def _complete_in_kaggle_cache(checkpoint: Checkpoint) -> pathlib.Path | None:
    """The cached file if kagglehub finished it (a file without the marker may be partial)."""
    handle = parse_model_handle(checkpoint.kaggle_handle)
    found = kagglehub.cache.Cache().load_from_cache(handle, checkpoint.filename)
    return pathlib.Path(found) if found else None


def _kaggle_credentials_found() -> bool:
    """Whether kagglehub has credentials; reads only local files and variables."""
    try:
        return kagglehub.config.get_kaggle_credentials() is not None
    except ValueError as err:  # a kaggle.json kagglehub cannot read
        raise DownloadError(
            f"{err}. The file must hold JSON like "
            '{"username": "your-kaggle-name", "key": "..."}; '
            f"download a fresh one with 'Create New Token' at {KAGGLE_SETTINGS_URL}."
        ) from err


def _download_into(folder: pathlib.Path, checkpoint: Checkpoint) -> pathlib.Path:
    """Has kagglehub download into a hidden folder, then moves the finished file into place."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{checkpoint.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted attempt
    try:
        downloaded = pathlib.Path(
            kagglehub.model_download(
                checkpoint.kaggle_handle, path=checkpoint.filename, output_dir=str(staging)
            )
        )
        if not downloaded.is_relative_to(staging):
            # Kaggle and Colab notebooks mount the model read-only instead of copying it.
            return downloaded
        target = folder / checkpoint.filename
        os.replace(downloaded, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _where_to_put(checkpoint: Checkpoint, folder: pathlib.Path | None) -> str:
    if folder is not None:
        return f"put {checkpoint.filename} at {folder / checkpoint.filename}"
    return (
        f"put {checkpoint.filename} in a folder and set {CHECKPOINT_DIR_ENV} to that folder, "
        f"so that ${CHECKPOINT_DIR_ENV}/{checkpoint.filename} exists (or pass cache_dir=)"
    )


def kaggle_failure_kind(status: int | None, *, has_credentials: bool) -> str:
    """What Kaggle's answer to a checkpoint download means, read from its HTTP status.

    PaliGemma is gated, so Kaggle refuses in ways that need different fixes:

        status      credentials  kind           what to do
        401 or 403  none found   "credentials"  create an API token and install it
        401         found        "rejected"     the key is wrong or revoked: make a new one
        403         found        "license"      accept the license on the model's page
        404         either       "missing"      the handle's variation or version is wrong
        None        either       "network"      no answer at all: offline, DNS or a proxy
        other       either       "server"       Kaggle's own trouble: try again later

    Without credentials a request is anonymous, and Kaggle refuses anonymous
    requests for gated models with 401 or 403; either way the key is what is
    missing, not the license.

    Args:
      status: the HTTP status code, or None when no HTTP answer came back.
      has_credentials: whether kagglehub found credentials before the request.
    Returns:
      One of the kinds above.
    """
    if status in (401, 403) and not has_credentials:
        return "credentials"
    if status is None:
        return "network"
    return {401: "rejected", 403: "license", 404: "missing"}.get(status, "server")


def _checkpoint_error(
    err: Exception, checkpoint: Checkpoint, folder: pathlib.Path | None, *, has_credentials: bool
) -> DownloadError:
    """Turns what kagglehub raised into one message that says what to do."""
    if isinstance(err, DataCorruptionError):
        return DownloadError(
            f"{checkpoint.filename} arrived corrupted (its MD5 did not match Kaggle's); "
            "run this again."
        )
    handle = parse_model_handle(checkpoint.kaggle_handle)
    model_page = f"https://www.kaggle.com/models/{handle.owner}/{handle.model}"
    put = _where_to_put(checkpoint, folder)
    response = getattr(err, "response", None)
    status = response.status_code if response is not None else None
    messages = {
        "credentials": (
            f"Kaggle needs your API credentials to download {checkpoint.name}, and none were "
            f"found. Create a token at {KAGGLE_SETTINGS_URL} (API section), then either set "
            "KAGGLE_USERNAME and KAGGLE_KEY, or save it as ~/.kaggle/kaggle.json, or call "
            "kagglehub.login() in a notebook; also accept the license at "
            f"{model_page} with that account. Or, without Kaggle, {put}."
        ),
        "rejected": (
            f"Kaggle rejected your credentials (HTTP 401) for {checkpoint.kaggle_handle}: the "
            f"key is wrong or was revoked. Create a new token at {KAGGLE_SETTINGS_URL} and update "
            f"KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json. Or {put}."
        ),
        "license": (
            f"Kaggle refused {checkpoint.kaggle_handle} (HTTP 403): PaliGemma is gated. Sign in "
            f"to Kaggle with the account your API key belongs to, accept the license at "
            f"{model_page}, and run this again. Or {put}."
        ),
        "missing": (
            f"Kaggle has no {checkpoint.filename} under {checkpoint.kaggle_handle} (HTTP 404): "
            f"check the variation and version at {model_page} against "
            f"solutions.configs.CHECKPOINTS. Or {put}."
        ),
        "network": (
            f"Could not reach Kaggle to download {checkpoint.kaggle_handle} "
            f"({type(err).__name__}): no network, or DNS or a proxy is in the way. Connect and "
            f"run this again, or download {checkpoint.filename} elsewhere from {model_page} and "
            f"{put}."
        ),
        "server": (
            f"Kaggle answered HTTP {status} for {checkpoint.kaggle_handle}; try again later, "
            f"or {put}."
        ),
    }
    return DownloadError(messages[kaggle_failure_kind(status, has_credentials=has_credentials)])


# --- Public buckets, over plain HTTPS ------------------------------------------------------------


def _fetch_url(
    url: str,
    target: pathlib.Path,
    *,
    by_hand: str,
    check: Callable[[pathlib.Path], None] | None = None,
    progress: bool = True,
) -> None:
    """Downloads `url` to `target` atomically.

    The bytes go to a hidden file beside `target`; it is renamed to `target` only
    when complete (as long as Content-Length says), intact (MD5 as the bucket's
    x-goog-hash header says, when it says) and accepted by `check`. On any
    failure the hidden file is removed and `DownloadError` explains, ending with
    `by_hand`: how to get the file without this code.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            _save_response(response, partial, url, progress=progress)
        if check is not None:
            check(partial)
        os.replace(partial, target)
    except urllib.error.HTTPError as err:
        raise _http_error(err.code, url, by_hand) from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        host = urllib.parse.urlsplit(url).hostname
        raise DownloadError(
            f"Could not download {url} ({err}): no network, or DNS or a proxy is in the way "
            f"of {host}. Connect and run this again, or on a machine with network {by_hand}."
        ) from err
    finally:
        partial.unlink(missing_ok=True)


def _save_response(response, partial: pathlib.Path, url: str, *, progress: bool) -> None:
    total = int(response.headers.get("Content-Length") or 0) or None
    expected_md5 = _bucket_md5(response.headers)
    md5 = hashlib.md5()
    received = 0
    name = url.rsplit("/", 1)[-1]
    with (
        open(partial, "wb") as out,
        tqdm.tqdm(
            total=total,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        ) as bar,
    ):
        while chunk := response.read(_CHUNK_BYTES):
            out.write(chunk)
            md5.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(
            f"{url}: the transfer stopped after {received} of {total} bytes; run this again."
        )
    actual_md5 = base64.b64encode(md5.digest()).decode()
    if expected_md5 is not None and actual_md5 != expected_md5:
        raise DownloadError(
            f"{url} arrived corrupted: MD5 {actual_md5}, the bucket says {expected_md5}; "
            "run this again."
        )


def _bucket_md5(headers) -> str | None:
    """The base64 MD5 in Cloud Storage's `x-goog-hash: crc32c=..., md5=...` header(s), if any."""
    for header in headers.get_all("x-goog-hash") or ():
        for part in header.split(","):
            kind, _, value = part.strip().partition("=")
            if kind == "md5":
                return value
    return None


def _http_error(code: int, url: str, by_hand: str) -> DownloadError:
    if code in (401, 403):
        return DownloadError(
            f"{url} answered HTTP {code}. This public bucket needs no login, so something "
            "between you and it (a proxy, a firewall, a captive portal) is refusing: check "
            f"HTTPS_PROXY and your network. Or {by_hand}."
        )
    if code == 404:
        return DownloadError(f"{url} answered HTTP 404: the file is not there. Or {by_hand}.")
    return DownloadError(f"{url} answered HTTP {code}; try again later, or {by_hand}.")


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes as 64 lowercase hex digits, as `sha256sum` prints it.

    The file is read in 1 MiB chunks, so a checkpoint of many gigabytes needs
    no more memory than a small file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- The tokenizer, from big_vision's bucket -----------------------------------------------------


def download_tokenizer(dest_dir: str | os.PathLike) -> pathlib.Path:
    """Returns `dest_dir/paligemma_tokenizer.model`, downloading it if needed.

    Google publishes no checksum for this file, so it is verified in three ways:
      1. the transfer: the length and the MD5 that Cloud Storage sends along;
      2. the content: it must load as SentencePiece with PaliGemma's layout
         (pad 0, eos 1, bos 2, "\\n" one piece, 257,152 pieces, <loc0000> at
         256,000, <seg000> at 257,024), and match `KNOWN_TOKENIZER_SHA256` if set;
      3. later loads: its SHA-256 is recorded in `paligemma_tokenizer.model.sha256`
         the first time, and every later call recomputes and compares it, so a
         file corrupted or replaced on disk is caught.
    A file put there by hand is checked as in 2 and then recorded. An existing
    file is never downloaded again, so this works offline once done.

    Args:
      dest_dir: the folder for the tokenizer (created if missing).
    Returns:
      The path of the tokenizer file.
    Raises:
      DownloadError: it cannot be downloaded (the message gives the gsutil
        command and where to put the file) or fails a check above.
    """
    path = pathlib.Path(dest_dir) / TOKENIZER_FILENAME
    if path.is_file():
        _check_against_record(path)
        return path
    by_hand = (
        f"download it with `gsutil cp {TOKENIZER_GCS} {path}` (or from {TOKENIZER_URL}) "
        f"and place it at {path}"
    )
    _fetch_url(
        TOKENIZER_URL,
        path,
        by_hand=by_hand,
        check=lambda partial: check_paligemma_tokenizer(partial, name=TOKENIZER_URL),
    )
    write_atomic(_record_path(path), f"{sha256_file(path)}  {path.name}\n")
    return path


def check_paligemma_tokenizer(path: str | os.PathLike, name: str | None = None) -> None:
    """Raises DownloadError unless `path` is a SentencePiece model with PaliGemma's layout.

    `name` is what the message calls the file (default: its path).
    """
    path = pathlib.Path(path)
    name = name or str(path)
    _check_pinned_sha256(path, name)
    try:
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise DownloadError(f"{name} is not a SentencePiece model ({err}).") from err
    problems = []
    try:
        tokenizer_lib.check_layout(tokenizer, name)
    except ValueError as err:
        problems.append(str(err))
    if tokenizer.get_piece_size() != PALIGEMMA_VOCAB_SIZE:
        problems.append(
            f"{tokenizer.get_piece_size()} pieces, PaliGemma has {PALIGEMMA_VOCAB_SIZE}"
        )
    for piece, expected in (("<loc0000>", FIRST_LOC_ID), ("<seg000>", FIRST_LOC_ID + 1024)):
        if tokenizer.piece_to_id(piece) != expected:
            problems.append(f"{piece} has id {tokenizer.piece_to_id(piece)}, not {expected}")
    if problems:
        raise DownloadError(
            f"{name} is not PaliGemma's tokenizer: {'; '.join(problems)}. "
            f"The right file is {TOKENIZER_URL}."
        )


def _record_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def _check_pinned_sha256(path: pathlib.Path, name: str) -> None:
    if KNOWN_TOKENIZER_SHA256 is None:
        return
    digest = sha256_file(path)
    if digest != KNOWN_TOKENIZER_SHA256:
        raise DownloadError(
            f"{name} has SHA-256 {digest}, but KNOWN_TOKENIZER_SHA256 is {KNOWN_TOKENIZER_SHA256}."
        )


def _check_against_record(path: pathlib.Path) -> None:
    record = _record_path(path)
    if not record.is_file():  # put there by hand: check it once, then trust its hash
        check_paligemma_tokenizer(path)
        write_atomic(record, f"{sha256_file(path)}  {path.name}\n")
        return
    recorded = record.read_text().split()[0]
    digest = sha256_file(path)
    if digest != recorded:
        raise DownloadError(
            f"{path} has changed since it was downloaded: its SHA-256 is {digest}, but {record} "
            f"recorded {recorded}. The file is corrupted or was replaced; delete both files "
            "and run this again."
        )


# --- longcap100, from its bucket -----------------------------------------------------------------


def download_longcap100(dest_dir: str | os.PathLike) -> pathlib.Path:
    """Downloads longcap100, the fine-tuning notebook's dataset, into `dest_dir`.

    The bucket holds `data_train90.jsonl` (90 examples), `data_val10.jsonl`
    (10) and the images they name; each line is
    `{"image": ..., "prefix": ..., "suffix": ...}` with the image path relative
    to the bucket, so after this it is relative to `dest_dir`, which is what
    `solutions.data.read_jsonl` expects. Each file is written atomically, and
    files already present are kept: a run cut short resumes where it stopped,
    and a finished folder needs no network. A first attempt that fetches
    nothing (no network, say) leaves no empty folder behind, so a missing
    folder still means "not downloaded yet".

    Args:
      dest_dir: the dataset folder (created if missing).
    Returns:
      `dest_dir` as a Path.
    Raises:
      DownloadError: a file cannot be downloaded (the message gives the gsutil
        command that copies the bucket by hand) or a jsonl line is unusable.
    """
    root = pathlib.Path(dest_dir)
    created = not root.exists()
    try:
        _download_longcap100_into(root)
    finally:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return root


def _download_longcap100_into(root: pathlib.Path) -> None:
    by_hand = f"copy the bucket with `gsutil -m cp -n '{LONGCAP100_GCS}/*' {root}/`"
    for split in LONGCAP100_SPLITS:
        if not (root / split).is_file():
            _fetch_url(LONGCAP100_URL + split, root / split, by_hand=by_hand)
    images = sorted({name for split in LONGCAP100_SPLITS for name in _image_names(root, split)})
    missing = [name for name in images if not (root / name).is_file()]
    for name in tqdm.tqdm(missing, desc="longcap100 images", unit="file"):
        url = LONGCAP100_URL + urllib.parse.quote(name)
        _fetch_url(url, root / name, by_hand=by_hand, progress=False)


def _image_names(root: pathlib.Path, split: str) -> list[str]:
    """The image paths a jsonl file names, each checked to stay inside `root`."""
    names = []
    path = root / split
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            name = json.loads(line)["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DownloadError(
                f"{where}: not a JSON object with an 'image' field ({err!r}); "
                "delete the file and run this again."
            ) from err
        if not isinstance(name, str) or root.resolve() not in (root / name).resolve().parents:
            raise DownloadError(
                f"{where}: image path {name!r} is not a relative path inside {root}; "
                "delete the file and run this again."
            )
        names.append(name)
    return names
