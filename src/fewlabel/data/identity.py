"""Which images are the same image: a short content key per sample.

Keys serve two guards. Splitting merges samples with the same key into one group, so a copy of an
image (another file name, another folder) can never sit on both sides of the test split. Encoders
record the keys of every image they saw, so ``train`` and ``curve`` can refuse one that saw a test
image (or a copy of one).

A key is a hash of content, never of a name: a file's bytes; a folder (a DICOM series) the sorted
keys of its files; an NPZ member the bytes of its array. Two encodings of the same pixels (a PNG and
a TIFF of one image) get different keys; ``fewlabel inspect`` compares decoded pixels and reports
those.
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

from fewlabel.data.readers import NPZ_SEP
from fewlabel.errors import UnreadableFileError

_DIGEST = 8  # bytes: 16 hex digits; collisions among a few million images are vanishingly rare
# Keys already computed in this process, by the file's full stat: a catalog's fingerprint and the
# split's duplicate check read each file once between them. A rewritten or replaced file has another
# inode, size, mtime or ctime (``cp -p`` keeps the mtime, not the ctime); a file changed in the last
# seconds is never remembered, since a rewrite within one timestamp tick would keep its stat.
_KNOWN: dict[tuple[Any, ...], str] = {}
_KNOWN_MAX = 200_000
_SETTLED_NS = 2_000_000_000


def _hash_file(path: str) -> str:
    digest = hashlib.blake2b(digest_size=_DIGEST)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_folder(path: str) -> str:
    """A DICOM series (or any folder read as one volume): its files' keys, sorted, hashed."""
    keys = sorted(file_key(os.path.join(root, name))
                  for root, _, names in os.walk(path) for name in names if not name.startswith("."))
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


def file_keys(addresses: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated keys of the given sample paths."""
    return sorted({file_key(a) for a in addresses})
