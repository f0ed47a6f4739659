"""The output folder of a prediction run: where it may be, which names its files may take, and its run manifest.

:class:`monai_mcx.handlers.PredictionWriter` writes through these rules:

- the output folder may not be, contain or lie inside the folder of an input image
  (:func:`check_outside_inputs`): a run into the input folder would write beside the user's files (and
  ``a.png``'s mask output is named like a ground truth ``a_mask.png``);
- a run never replaces a file it did not create: a name already on disk is taken (:class:`OutputNames`);
- output names are UTF-8 and short: bytes of an input name that are not UTF-8 and names whose stem is longer
  than :data:`MAX_STEM_BYTES` give a stem with a short hash of the full name (:func:`candidate_stems`); input
  paths are written into ``predictions.csv`` and the JSON files with such bytes as ``\\xe9``
  (:func:`display_text`, Python's ``backslashreplace``);
- an output folder that is not empty is refused unless the user asks to ``overwrite`` it (the files of the
  previous run are removed first) or to ``resume`` it (the images whose outputs are complete are kept and not
  run again): :func:`prepare_output_folder`. Which files a run created, and which images are complete, is read
  from the folder's run manifest (:class:`RunManifest`, ``.monai_mcx_run.jsonl``); a folder with files but no
  manifest is never cleared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from monai_mcx.data.datalist import IMAGE_SUFFIXES
from monai_mcx.keys import BatchKeys, DatalistKeys
from monai_mcx.utils import as_bool

__all__ = [
    "OutputFolderError",
    "check_outside_inputs",
    "input_folders",
    "OutputNames",
    "candidate_stems",
    "split_image_suffix",
    "STEM_SUFFIXES",
    "display_text",
    "MAX_STEM_BYTES",
    "RunManifest",
    "MANIFEST_NAME",
    "SUMMARY_NAME",
    "prepare_output_folder",
    "pending_items",
]

#: the run manifest's file name in the output folder (hidden: it is the writer's bookkeeping, not a result)
MANIFEST_NAME = ".monai_mcx_run.jsonl"
#: the run's summary, one row per input
SUMMARY_NAME = "predictions.csv"
#: longest output stem in UTF-8 bytes: with ``_saliency_<class>.png`` and the temporary file's ``.<name>.XXXXXXXX.tmp``
#: around it a name stays well under the 255 bytes most file systems allow
MAX_STEM_BYTES = 128
#: the suffixes an output stem drops (case-insensitive): the input images' (:data:`IMAGE_SUFFIXES`), longest first
STEM_SUFFIXES = tuple(sorted(IMAGE_SUFFIXES, key=len, reverse=True))
_SURROGATES = re.compile("[\ud800-\udfff]+")
_TOOL = "monai_mcx.PredictionWriter"


class OutputFolderError(ValueError):
    """The output folder cannot be used as it is. The message names the folder, the problem and what to do."""


def _image_path(item: str | os.PathLike | Mapping) -> str | None:
    """The path of an input (an item ``{"image": path, ...}`` or a path); None for an item whose path names no
    file or folder (a datalist entry without a file: nothing there can be overwritten)."""
    if isinstance(item, Mapping):
        if item.get(BatchKeys.ERROR) and not os.path.lexists(str(item.get(DatalistKeys.IMAGE, ""))):
            return None
        item = item.get(DatalistKeys.IMAGE)
    if item is None or str(item) == "":
        return None
    return str(item)


def input_folders(inputs: Iterable[str | os.PathLike | Mapping]) -> list[Path]:
    """The folders an output folder must stay out of: the folder of every input image, in first-seen order.

    Args:
        inputs: the run's items (``{"image": path}``, as :func:`monai_mcx.data.inference_items` returns them,
            skipped entries included; the ``input_root`` of an instance found in a sub-folder is one of the folders
            too, so the output folder stays out of the whole DICOM tree) or image paths.
    """
    seen: dict[str, Path] = {}
    for item in inputs:
        path = _image_path(item)
        if path is not None:
            folder = Path(path).parent
            seen.setdefault(str(folder), folder)
        if isinstance(item, Mapping) and item.get("input_root"):  # an instance of a searched DICOM tree
            seen.setdefault(str(item["input_root"]), Path(item["input_root"]))
    return list(seen.values())


def check_outside_inputs(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | Mapping]) -> None:
    """Refuse an output folder that is, contains or lies inside the folder of an input image.

    Paths are compared after resolving symbolic links (the output folder need not exist yet).

    Raises:
        OutputFolderError: naming the output folder, the input folder and how they relate.
    """
    out = Path(os.path.realpath(output_dir))
    for folder in input_folders(inputs):
        real = Path(os.path.realpath(folder))
        if out == real:
            how = "is"
        elif real in out.parents:
            how = "lies inside"
        elif out in real.parents:
            how = "contains"
        else:
            continue
        raise OutputFolderError(
            f"{output_dir}: refused as the output folder: it {how} the input folder {folder}. Predictions written "
            "there would mix with (and could replace) the input files, e.g. a ground-truth '<name>_mask.png'; "
            "choose an --output_dir outside the folders of the input images."
        )


def display_text(text: str) -> str:
    """``text`` (a path or a message naming one) as valid UTF-8 text: the bytes of a file name that are not UTF-8
    (which Python holds as surrogate escapes, ``caf\\udce9.png``) are written as ``\\xe9`` (``caf\\xe9.png``,
    Python's ``backslashreplace``). Text without such bytes is returned unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _digest(data: str, n: int) -> str:
    return hashlib.sha1(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data).hexdigest()[:n]


def _clean(stem: str, name: str) -> str:
    """``stem`` as a UTF-8, short output stem: undecodable bytes become ``_`` and a stem longer than
    :data:`MAX_STEM_BYTES` is cut; either way ``_`` and 10 hex digits of the SHA-1 of ``name`` (the full file
    name) are appended, so two names that differ only in what was replaced or cut keep apart."""
    clean = _SURROGATES.sub(lambda m: "_" * len(m.group()), stem)
    if clean == stem and len(stem.encode("utf-8")) <= MAX_STEM_BYTES:
        return stem
    cut = clean.encode("utf-8")[: MAX_STEM_BYTES - 11].decode("utf-8", "ignore")
    return f"{cut}_{_digest(name, 10)}"


def split_image_suffix(name: str) -> tuple[str, str]:
    """``(stem, suffix)`` of a file name: ``suffix`` is its image suffix (one of :data:`STEM_SUFFIXES`, any case;
    ``.nii.gz`` as a whole), ``""`` when it has none (an extension-less DICOM keeps its whole name). Other dots stay
    in the stem: ``1.2.840.113619.2.55.3.1234.dcm`` -> ``("1.2.840.113619.2.55.3.1234", ".dcm")``."""
    lower = name.lower()
    for suffix in STEM_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def candidate_stems(src: str) -> Iterator[str]:
    """The output stems of input ``src`` in order of preference (the first free one is used).

    1. the file name without its image suffix (:func:`split_image_suffix`);
    2. the stem and the suffix, dots replaced by ``_`` (``a.dcm`` beside ``a.png``: ``a_dcm``);
    3. the stem, ``_`` and 8 hex digits of the SHA-1 of the input path as given (the same name in two folders);
    4. that, then ``_2``, ``_3``, ...

    Each is made UTF-8 and short (:func:`display_text`, :data:`MAX_STEM_BYTES`).
    """
    name = Path(src).name
    stem, suffix = split_image_suffix(name)
    yield _clean(stem, name)
    if suffix:
        yield _clean(f"{stem}_{suffix.replace('.', '_').strip('_')}", name)
    tagged = f"{_clean(stem, name)}_{_digest(src, 8)}"
    yield tagged
    k = 2
    while True:
        yield f"{tagged}_{k}"
        k += 1


class OutputNames:
    """The file names taken in an output folder, so that no output replaces a file the run did not create.

    A name is taken when this run already claimed it (compared case-insensitively: two names that differ only in
    case are one file on macOS and Windows) or when a file or link of that name exists in the folder.

    Args:
        folder: the output folder.
        reserved: names no image output may take (``predictions.csv``).
    """

    def __init__(self, folder: str | os.PathLike, reserved: Iterable[str] = ()) -> None:
        self.folder = Path(folder)
        self.reserved = [str(n) for n in reserved]
        self._claimed: set[str] = set()
        self.clear()

    def clear(self) -> None:
        """Forget the claimed names (a new run); the reserved names stay taken."""
        self._claimed = {n.casefold() for n in self.reserved}

    def free(self, names: Iterable[str]) -> bool:
        """True when none of ``names`` is claimed or exists in the folder."""
        names = list(names)
        if any(n.casefold() in self._claimed for n in names):
            return False
        return not any(os.path.lexists(self.folder / n) for n in names)

    def claim(self, names: Iterable[str]) -> None:
        """Mark ``names`` as this run's."""
        self._claimed.update(n.casefold() for n in names)

    def allocate(self, src: str, names_of: Callable[[str], list[str]]) -> str:
        """Claim and return the first of :func:`candidate_stems` whose every output name (``names_of(stem)``) is
        free."""
        for stem in candidate_stems(src):
            names = names_of(stem)
            if self.free(names):
                self.claim(names)
                return stem
        raise AssertionError("unreachable: candidate_stems never ends")

    def allocate_inputs(
        self, inputs: Iterable[str | os.PathLike | Mapping], names_of: Callable[[str], list[str]], skip: Iterable = ()
    ) -> dict[str, list[str]]:
        """:meth:`allocate` for every input of a run, in input order, before any is written: the stems then do not
        depend on which process writes an image or when (``multi_gpu_inference.json``). An input named twice gets
        two stems (used in order); items carrying an ``error`` and the paths in ``skip`` (a resumed run's complete
        images) get none; an input found unreadable later leaves its stem unused.

        Returns:
            input path -> its stems."""
        skip = {str(s) for s in skip}
        stems: dict[str, list[str]] = {}
        for item in inputs:
            src = str(item.get(DatalistKeys.IMAGE)) if isinstance(item, Mapping) else str(item)
            if src not in skip and not (isinstance(item, Mapping) and item.get(BatchKeys.ERROR)):
                stems.setdefault(src, []).append(self.allocate(src, names_of))
        return stems


def sort_rows(rows: Iterable[Mapping], inputs: Iterable[str | os.PathLike | Mapping]) -> list:
    """Rows of ``predictions.csv`` (``image``: :func:`display_text` of the path) in the order of their input in
    ``inputs`` (stable; rows of paths not there last): the order one process writes them in, whatever rank wrote
    which image."""
    order: dict[str, int] = {}
    for i, item in enumerate(inputs):
        order.setdefault(display_text(str(item.get("image")) if isinstance(item, Mapping) else str(item)), i)
    return sorted(rows, key=lambda r: order.get(r.get("image"), len(order)))


class RunManifest:
    """The record of what prediction runs wrote into an output folder: ``<folder>/.monai_mcx_run.jsonl``.

    JSON Lines, appended and ``fsync``-ed record by record (rewriting one JSON file per image would cost time
    growing with the number of images; a run killed while appending leaves at most a truncated last line, which
    is ignored). Records:

    - ``{"event": "run", "tool": "monai_mcx.PredictionWriter", "mode": "new"|"overwrite"|"resume", "started",
      "settings": {...}}``: a run starts (``settings``: what decides the set of files per image, compared on
      ``resume``);
    - ``{"event": "image", "image": <input path>, "stem": ..., "files": [...]}``: an image's files are about to
      be written (in this order, the JSON last);
    - ``{"event": "done", "image": <input path>, "row": {...}}``: they all are; ``row`` is its row of
      ``predictions.csv``;
    - ``{"event": "summary", "files": ["predictions.csv"]}``: the summary is about to be written.

    Every file named in an ``image`` or ``summary`` record was created by a run (the files a run may remove);
    an image is complete when its last ``image`` record is followed by ``done`` and its files all exist.

    Args:
        folder: the output folder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.settings: dict | None = None
        self.owned: set[str] = set()
        #: input path -> {"stem", "files", "row" (None until done)} of its last ``image`` record
        self.images: dict[str, dict] = {}

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunManifest | None:
        """The manifest of ``folder``, or None when it has none.

        Raises:
            OutputFolderError: the manifest exists but is not one a monai_mcx run wrote.
        """
        manifest = cls(folder)
        if not os.path.lexists(manifest.path):
            return None
        try:
            lines = manifest.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise OutputFolderError(f"{manifest.path}: cannot read this run manifest ({e})") from e
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed while appending: its last line may be cut
            if number == 0 and not (isinstance(record, dict) and record.get("tool") == _TOOL):
                break
            manifest._apply(record)
        if manifest.settings is None:
            raise OutputFolderError(
                f"{manifest.path}: not a monai_mcx run manifest (its first line is not a '{_TOOL}' run record)"
            )
        return manifest

    def _apply(self, record: dict) -> None:
        event = record.get("event")
        if event == "run":
            self.settings = record.get("settings", {})
        elif event == "image":
            files = [str(f) for f in record.get("files", [])]
            self.owned.update(files)
            self.images[record[DatalistKeys.IMAGE]] = {"stem": record.get("stem"), "files": files, "row": None}
        elif event == "done" and record.get(DatalistKeys.IMAGE) in self.images:
            self.images[record[DatalistKeys.IMAGE]]["row"] = record.get("row")
        elif event == "summary":
            self.owned.update(str(f) for f in record.get("files", []))

    def complete(self) -> dict[str, dict]:
        """The complete images: input path -> ``{"stem", "files", "row"}``, in the order they were recorded."""
        return {
            src: entry
            for src, entry in self.images.items()
            if entry["row"] is not None and all(os.path.isfile(self.folder / f) for f in entry["files"])
        }

    def append(self, record: dict) -> None:
        """Add ``record`` as one line, flushed to disk, and apply it.

        Raises:
            OSError: naming the manifest (e.g. a full disk).
        """
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: cannot append to the run manifest ({e.strerror or e})") from e
        self._apply(record)

    def start_run(self, mode: str, settings: dict) -> None:
        self.append(
            {
                "event": "run",
                "tool": _TOOL,
                "mode": mode,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "settings": settings,
            }
        )

    def start_image(self, image: str, stem: str, files: list[str]) -> None:
        self.append({"event": "image", DatalistKeys.IMAGE.value: image, "stem": stem, "files": list(files)})

    def finish_image(self, image: str, row: dict) -> None:
        self.append({"event": "done", DatalistKeys.IMAGE.value: image, "row": row})

    def start_summary(self, files: list[str]) -> None:
        self.append({"event": "summary", "files": list(files)})

    def remove(self, names: Iterable[str]) -> None:
        """Remove the files ``names`` of the folder that exist (every one of them must be in :attr:`owned`)."""
        for name in names:
            if name not in self.owned:
                raise ValueError(f"{self.folder / name}: not created by a recorded run; not removed")
            try:
                os.unlink(self.folder / name)
            except FileNotFoundError:
                pass


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except NotADirectoryError as e:
        raise OutputFolderError(f"{folder}: the output folder is a file") from e


def prepare_output_folder(
    folder: str | os.PathLike, settings: dict, overwrite: bool | str = False, resume: bool | str = False
) -> tuple[RunManifest, dict[str, dict]]:
    """Make ``folder`` ready for a run: refuse a non-empty folder, or clear or continue a previous run's.

    - empty or missing: created, with a new manifest;
    - not empty, neither option: refused (the folder could hold another run's or the user's files);
    - ``overwrite``: the files the manifest records (the previous runs' outputs, ``predictions.csv``) and the
      manifest itself are removed, then a new manifest is started; other files are left (and never replaced);
    - ``resume``: the complete images (:meth:`RunManifest.complete`) are kept; every other file the manifest
      records (partial outputs of an image whose run was killed, the old ``predictions.csv``) is removed. The
      ``settings`` must equal those of the run that wrote the folder (else the images would differ in files).

    A folder with files but no manifest is refused by both options: it is not a monai_mcx output folder; so is a
    folder holding a ``predictions.csv`` that no recorded run wrote (the run would replace it).

    Args:
        folder: the output folder.
        settings: what decides an image's set of files (compared on ``resume``; JSON-serialisable).
        overwrite, resume: the options (true/false, as strings too); at most one of them.

    Returns:
        ``(manifest, complete)``: the manifest to append to, and the images kept from before (input path ->
        ``{"stem", "files", "row"}``; empty unless ``resume``).

    Raises:
        OutputFolderError: naming the folder, the problem and the options.
    """
    folder = Path(folder)
    overwrite, resume = as_bool(overwrite, "overwrite"), as_bool(resume, "resume")
    if overwrite and resume:
        raise OutputFolderError(f"{folder}: --overwrite true and --resume true exclude each other; choose one")
    entries = _entries(folder)
    if not entries:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = RunManifest(folder)
        manifest.start_run("new", settings)
        return manifest, {}
    if not (overwrite or resume):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputFolderError(
            f"{folder}: the output folder is not empty ({len(entries)} entries: {shown}); a second run into it would "
            "mix its files with those already there. Choose a new or empty --output_dir, or pass --overwrite true "
            "(remove the files of the previous run, then write this one) or --resume true (keep the images whose "
            "outputs are complete, run the others: the restart of a killed run)."
        )
    manifest = RunManifest.read(folder)
    if manifest is None:
        raise OutputFolderError(
            f"{folder}: not a monai_mcx output folder (it holds {len(entries)} entries but no {MANIFEST_NAME}), so "
            f"--{'overwrite' if overwrite else 'resume'} cannot tell which files a run created; nothing was removed. "
            "Choose a new or empty --output_dir."
        )
    summary = folder / SUMMARY_NAME
    if os.path.lexists(summary) and SUMMARY_NAME not in manifest.owned:
        raise OutputFolderError(
            f"{summary}: no recorded run wrote this file, and this run would replace it at its end; move it away or "
            "choose a new or empty --output_dir."
        )
    if overwrite:
        manifest.remove(sorted(manifest.owned))
        os.unlink(manifest.path)
        manifest = RunManifest(folder)
        manifest.start_run("overwrite", settings)
        return manifest, {}
    if manifest.settings != settings:
        changed = sorted(k for k in {*settings, *manifest.settings} if settings.get(k) != manifest.settings.get(k))
        raise OutputFolderError(
            f"{folder}: --resume true with other output settings than the run that wrote this folder (differing: "
            f"{', '.join(changed)}); its images would not have the same files. Resume with the same settings, or "
            "pass --overwrite true instead."
        )
    complete = manifest.complete()
    keep = {f for entry in complete.values() for f in entry["files"]}
    manifest.remove(sorted(manifest.owned - keep))
    manifest.start_run("resume", settings)
    return manifest, complete


def pending_items(items: list[dict], output_dir: str | os.PathLike, resume: bool | str = False) -> list[dict]:
    """The items still to run: with ``resume``, those whose image is not complete in ``output_dir``'s manifest.

    Items carrying an ``error`` are always kept (they become error rows again). When every image is complete
    the first item is kept, so that the run still happens and writes ``predictions.csv`` (the writer does not
    write that image again: its outputs are complete). The keys that are for the writer only (DICOM UIDs and
    age, :func:`monai_mcx.dicom.inputs.loader_item`) are dropped: the loader does not need them and they would
    not collate.

    Args:
        items: the run's items (``{"image": path}``, :func:`monai_mcx.data.inference_items`).
        output_dir: the output folder.
        resume: the ``resume`` option.
    """
    from monai_mcx.dicom.inputs import loader_item

    items = [loader_item(it) for it in items]
    if not as_bool(resume, "resume") or not items:
        return items
    try:
        manifest = RunManifest.read(output_dir)
    except OutputFolderError:
        return items  # the writer refuses the folder when the run starts
    if manifest is None:
        return items
    complete = manifest.complete()
    pending = [it for it in items if it.get(BatchKeys.ERROR) or str(it.get(DatalistKeys.IMAGE)) not in complete]
    return pending or items[:1]
