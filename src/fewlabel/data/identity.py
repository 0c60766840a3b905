"""Which images are the same image: a short content key per sample.

Keys serve two guards. Splitting merges samples with the same key into one group, so a copy of an
image (another file name, another folder) can never sit on both sides of the test split. Encoders
record the keys of every image they saw, so ``train`` and ``curve`` can refuse one that saw a test
image (or a copy of one).

A key is a hash of content, never of a name: a file's bytes; a folder (a DICOM series) the sorted
keys of its files; an NPZ member the bytes of its array. Two encodings of the same pixels (a PNG
re-saved with other metadata or compression, a PNG and a TIFF of one image) get different file keys
but one ``pixel_key``, a hash of the decoded pixels (source value type, shape, values): merging and
the leak checks use both, so a re-encoded copy of a test image is found too. Near-copies (resized,
re-compressed JPEGs) are not: ``fewlabel inspect`` reports those it can see.

Keys are made before anything decodes a file, so they check first what a reader would: only a
regular file is opened (a FIFO or a device is refused by its stat), a header declaring more than the
size limits is refused before a byte is hashed, and a file (or DICOM folder) over
``limits.max_file_bytes`` is refused by its size, and hashing stops there should it grow meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.readers import NPZ_SEP, check_header_limits, regular_file_size, special_file_reason
from fewlabel.errors import UnreadableFileError
from fewlabel.limits import check_file_bytes, max_file_bytes

_DIGEST = 8  # bytes: 16 hex digits; collisions among a few million images are vanishingly rare
# Keys already computed in this process, by the file's full stat: a catalog's fingerprint and the
# split's duplicate check read each file once between them. A rewritten or replaced file has another
# inode, size, mtime or ctime (``cp -p`` keeps the mtime, not the ctime); a file changed in the last
# seconds is never remembered, since a rewrite within one timestamp tick would keep its stat.
_KNOWN: dict[tuple[Any, ...], str] = {}
_KNOWN_MAX = 200_000
_PIXELS: dict[str, str] = {}  # file key -> pixel key: a content's pixels are decoded once
_SETTLED_NS = 2_000_000_000


def _hash_file(path: str) -> str:
    regular_file_size(path)  # a FIFO, a device, or a file too large for one image: refused, unopened
    check_header_limits(path)
    limit = max_file_bytes()
    digest = hashlib.blake2b(digest_size=_DIGEST)
    # O_NONBLOCK: should the file be swapped for a FIFO after the stat, the open cannot block; the
    # fstat below then refuses it.
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFileError("not a regular file (never read)", path=path)
        if nonblock:
            os.set_blocking(fd, True)
        done = 0
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            done += len(chunk)
            if done > limit:  # a file growing while it is read stops at the limit too
                check_file_bytes(done, path)
            digest.update(chunk)
    return digest.hexdigest()


def _hash_folder(path: str) -> str:
    """A DICOM series (or any folder read as one volume): its files' keys, sorted, hashed."""
    files = [os.path.join(root, name)
             for root, _, names in os.walk(path) for name in names if not name.startswith(".")]
    check_file_bytes(sum(regular_file_size(f) for f in files), path, what="folder")
    keys = sorted(file_key(f) for f in files)
    return hashlib.blake2b("\n".join(keys).encode(), digest_size=_DIGEST).hexdigest()


def _hash_npz_member(file_part: str, member: str) -> str:
    from fewlabel.data.readers import npz_member

    key, _, index = member.partition("/")
    arr = npz_member(Path(file_part), key)
    if index != "":
        arr = arr[int(index)]
    arr = np.ascontiguousarray(arr)
    digest = hashlib.blake2b(digest_size=_DIGEST)
    digest.update(repr((arr.shape, str(arr.dtype))).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def file_key(address: str) -> str:
    """16 hex digits of a sample's content (see the module docstring for what "content" is)."""
    file_part, sep, member = address.partition(NPZ_SEP)
    try:
        st = os.stat(file_part)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):  # a FIFO, a device: never opened
            raise UnreadableFileError(special_file_reason(file_part) or "not a regular file", path=file_part)
        # a folder's own stat does not change when a file inside it is rewritten: its files are
        # remembered one by one instead
        known = None if stat.S_ISDIR(st.st_mode) else (os.path.abspath(file_part), member, st.st_dev,
                                                        st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if known is not None and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _SETTLED_NS:
            known = None
        cached = _KNOWN.get(known) if known is not None else None
        if cached is not None:
            return cached
        if sep:
            key = _hash_npz_member(file_part, member)
        elif stat.S_ISDIR(st.st_mode):
            key = _hash_folder(file_part)
        else:
            key = _hash_file(file_part)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise UnreadableFileError(f"cannot read it to compare contents ({exc})", path=file_part) from exc
    if known is not None:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[known] = key
    return key


def pixel_key(address: str) -> str:
    """16 hex digits of a sample's decoded pixels: the value type the file holds, the shape and the
    values. Remembered by the file's key (its content), so each image is decoded once per process."""
    from fewlabel.data.readers import read_image

    content = file_key(address)  # the checks before any read, and the memo's key
    cached = _PIXELS.get(content)
    if cached is not None:
        return cached
    array, meta = read_image(address)
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=_DIGEST, person=b"pixels")
    digest.update(repr((str(meta.dtype), array.shape, str(array.dtype))).encode())
    digest.update(array.tobytes())
    key = digest.hexdigest()
    if len(_PIXELS) >= _KNOWN_MAX:
        _PIXELS.clear()
    _PIXELS[content] = key
    return key


def identity_keys(addresses: Iterable[str]) -> set[str]:
    """Every key of the given samples, of their files and of their pixels: what a record of "the
    images it saw" holds and what a leak check compares."""
    return {k for a in addresses for k in (file_key(a), pixel_key(a))}


def file_keys(addresses: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated keys of the given sample paths."""
    return sorted({file_key(a) for a in addresses})
