"""Catalog: turn a folder, a CSV manifest or a MedMNIST-style .npz into one table of samples.

Why a table first: every later step (splits, preprocessing, training, the report) works on sample
ids, so the question "which files, which labels, which patients" is answered once, here, and can
be checked (``fewlabel inspect``) before any training starts. Nothing is decoded here; the catalog
only looks at names, so it is fast even for thousands of files.

Layout: ``table`` (``Sample``, ``Catalog``, ``Issue``: what every source produces), ``scan`` (the
folder walk shared by class folders, mask folders and the pool), one module per source (``folders``,
``manifest``, ``medmnist``, ``pool``) and ``load`` (``load_catalog`` picks the source from the registry
``load.SOURCES``). A NEW SOURCE is one module with a ``detect(path) -> bool`` and a
``from_<kind>(path, masks) -> Catalog`` plus one line in ``load.SOURCES``.

Sources (``load_catalog``):

* a folder with one sub-folder per class: ``DATA/<class>/**/<file>``. Files directly in ``DATA``
  (README, LICENSE, a CSV) are not samples; they are ignored and listed in ``catalog.notes``.
* the segmentation layout ``DATA/images/<class>/<file>`` + ``DATA/masks/<class>/<same name>``, found
  by itself; or any class folder plus ``masks=DIR`` mirroring its tree. A mask has the image's
  relative path; its extension may differ (``a.png`` ↔ ``a.tif``).
* a CSV manifest with columns ``path,label[,group][,mask][,split]``; paths relative to the CSV.
* a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_…``, ``test_…``): one sample per
  row, addressed ``"name.npz::train_images/<i>"``; ``split`` set from the member name.

Rules:

* ``Sample.id`` is the path relative to the data root (posix), unique; ``group`` defaults to the id.
* Class names are sorted naturally ("2" before "10"); ``labels()`` index into ``classes``. An .npz's
  labels may be numbers or strings; either way they become class names, sorted the same way.
* Two class names that print alike (``load._print_key``: Unicode compatibility form, invisible
  format characters dropped, white space collapsed) are an issue naming both; so is a file, folder
  or class name that is not UTF-8 (``readers.undecodable_name``): results could not record it.
* A sub-folder made only of DICOM files is ONE sample (a volume).
* Hidden files and folders (leading dot), ``Thumbs.db``, ``desktop.ini`` and ``__MACOSX`` are skipped.
  Documentation files (README*, LICENSE*, ``.md .txt .csv .json .yaml .rst .html .pdf .xml``) are
  ignored and listed in ``notes``. Any OTHER file whose extension no reader handles is an error that
  lists them: nothing is skipped silently.
* ``group_pattern``: a regex searched (``re.search``) in each id; its first capture group (or the whole
  match when it has none) is the group. A path it does not match is an error naming the file. With a
  manifest ``group`` column too, the pattern wins.
* Bad input raises one ``FewlabelError`` subclass naming the file. With ``strict=False`` (what
  ``inspect`` uses) problems are collected in ``catalog.issues`` instead, so all can be listed at once.
"""

from __future__ import annotations

from fewlabel.data.catalog.load import load_catalog
from fewlabel.data.catalog.pool import load_pool
from fewlabel.data.catalog.scan import DOC_STEMS, DOC_SUFFIXES
from fewlabel.data.catalog.table import Catalog, Issue, Sample, natural_key, without_classes

__all__ = ["Sample", "Catalog", "Issue", "load_catalog", "load_pool", "natural_key", "without_classes",
           "DOC_SUFFIXES", "DOC_STEMS"]
