"""Which image files are the same file: a short content key per sample, so a pretrained encoder can
record what it saw and ``train`` can refuse one that saw its test images (even copies of them, in
another folder or under another name)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from fewlabel.data.readers import NPZ_SEP


def file_key(address: str) -> str:
    """16 hex digits of the file's bytes (BLAKE2b); an NPZ member is keyed by file and member."""
    file_part, sep, member = address.partition(NPZ_SEP)
    if sep:
        return hashlib.blake2b(f"{os.path.realpath(file_part)}{sep}{member}".encode(),
                               digest_size=8).hexdigest()
    digest = hashlib.blake2b(digest_size=8)
    with open(file_part, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_keys(addresses: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated keys of the given sample paths."""
    return sorted({file_key(a) for a in addresses})
