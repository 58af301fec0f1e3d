"""Where images come from: folders, list files, tar and zip archives, local or fsspec.

`list_entries(source)` lists a source once (at planning time); `Reader` reads the bytes
of planned items without extracting archives to disk.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import csv
import io
import logging
import os
import posixpath
import tarfile
import threading
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import fsspec

from ..errors import SourceError
from ..utils import retry_io

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png bmp dib gif webp tif tiff jp2 j2k jpf pbm pgm ppm pnm pfm "
    "sr ras hdr pic avif heic heif".split())
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".tsv")
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image", "image_path",
                "url")


@dataclass(frozen=True)
class Source:
    """One source as the user gave it: kind is folder, list, tar or zip."""
    kind: str
    url: str

    @property
    def streaming(self) -> bool:
        """True for compressed tar archives, which can only be read front to back."""
        return self.kind == "tar" and not self.url.lower().endswith(".tar")

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/")) or self.url

    def to_json(self) -> dict:
        return {"kind": self.kind, "url": self.url}


class Entry(NamedTuple):
    """A listed item: its key within the source, how to find it, where its bytes lie."""
    key: str
    locator: str
    offset: int = -1
    size: int = -1


def entry_size(source: Source, locator: str, size: int = -1) -> int:
    """The size in bytes of a listed item: as listed (archive members), else asked of the
    file system (-1 where the file cannot be reached any more)."""
    if size >= 0 or source.kind not in ("folder", "list"):
        return size
    url = f"{source.url.rstrip('/')}/{locator}" if source.kind == "folder" else locator
    try:
        fs, path = _fs(url)
        return int(fs.size(path))
    except (OSError, ValueError, TypeError):
        return -1


def is_image_name(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and base.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS \
        and "." in base


def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def _normalise(url: str) -> str:
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def resolve_sources(specs: Iterable[str]) -> list[Source]:
    """Turn --source arguments into Sources (globs expanded, kinds detected)."""
    out = []
    for spec in specs:
        url = _normalise(spec)
        if any(c in url for c in "*?["):
            fs, _ = _fs(url)
            proto = url.split("://", 1)[0] + "://" if "://" in url else ""
            matches = sorted(fs.glob(_fs(url)[1]))
            if not matches:
                raise SourceError(f"source {spec!r} matches no files")
            out += [detect(proto + m if proto and "://" not in m else m) for m in matches]
        else:
            out.append(detect(url))
    if len({s.url for s in out}) != len(out):
        raise SourceError("the same source is given twice: " +
                          ", ".join(sorted({s.url for s in out if
                                            [t.url for t in out].count(s.url) > 1})))
    return out


def detect(url: str) -> Source:
    """The Source for a path or URL, by what it is and how it is named."""
    fs, path = _fs(url)
    try:
        is_dir = retry_io(lambda: fs.isdir(path), f"inspect source {url}", attempts=3)
        exists = is_dir or retry_io(lambda: fs.exists(path), f"inspect {url}", attempts=3)
    except OSError as e:
        raise SourceError(f"source {url} cannot be read: {e}") from e
    if not exists:
        raise SourceError(f"source {url} does not exist; check the path (is Drive mounted?)")
    low = url.lower()
    if is_dir:
        return Source("folder", url.rstrip("/"))
    if low.endswith(TAR_SUFFIXES):
        return Source("tar", url)
    if low.endswith(".zip"):
        return Source("zip", url)
    if low.endswith(LIST_SUFFIXES):
        return Source("list", url)
    raise SourceError(
        f"source {url} is not a folder, a list file ({', '.join(LIST_SUFFIXES)}), a tar "
        f"archive ({', '.join(TAR_SUFFIXES)}) or a .zip archive; give one of those")


def list_entries(source: Source) -> list[Entry]:
    """All image entries of a source, in a stable order (sorted; archives in member order)."""
    lister = {"folder": _list_folder, "list": _list_file, "tar": _list_tar,
              "zip": _list_zip}[source.kind]
    try:
        entries = lister(source)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise SourceError(f"cannot list {source.kind} source {source.url}: {e}") from e
    logger.info("%s %s: %d images", source.kind, source.url, len(entries))
    return entries


def _list_folder(source: Source) -> list[Entry]:
    fs, root = _fs(source.url)
    root = root.rstrip("/")
    found = retry_io(lambda: fs.find(root, withdirs=False), f"list {source.url}", attempts=3)
    entries = []
    for p in found:
        rel = p[len(root):].lstrip("/")
        if is_image_name(rel) and not any(part.startswith(".") for part in rel.split("/")):
            entries.append(Entry(rel, rel))
    return sorted(entries)


def _list_file(source: Source) -> list[Entry]:
    fs, path = _fs(source.url)
    text = retry_io(lambda: fs.cat_file(path), f"read {source.url}", attempts=3).decode("utf-8-sig")
    if source.url.lower().endswith((".csv", ".tsv")):
        paths = _csv_paths(text, "\t" if source.url.lower().endswith(".tsv") else ",", source)
    else:
        paths = [ln.strip() for ln in text.splitlines()]
        paths = [p for p in paths if p and not p.startswith("#")]
    base = source.url.rsplit("/", 1)[0]
    seen, entries = set(), []
    for p in paths:
        if p in seen:
            continue
        seen.add(p)
        full = p if ("://" in p or p.startswith("/")) else f"{base}/{p}"
        entries.append(Entry(p, full))
    if len(seen) < len(paths):
        logger.warning("%s lists %d paths more than once; each is planned once",
                       source.url, len(paths) - len(seen))
    return entries


def _csv_paths(text: str, delimiter: str, source: Source) -> list[str]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    if col is None:
        raise SourceError(f"{source.url} has no path column; name one of its columns "
                          f"{' or '.join(PATH_COLUMNS[:3])} (found: {list(columns) or 'none'})")
    return [row[col].strip() for row in reader if (row.get(col) or "").strip()]


def _list_tar(source: Source) -> list[Entry]:
    fs, path = _fs(source.url)
    mode = "r|*" if source.streaming else "r:"
    entries = []
    with fs.open(path, "rb", block_size=1 << 22) as f, tarfile.open(fileobj=f, mode=mode) as tf:
        for m in tf:
            if m.isfile() and is_image_name(m.name):
                entries.append(Entry(m.name, m.name, -1 if source.streaming else m.offset_data,
                                     m.size))
    return entries


def _list_zip(source: Source) -> list[Entry]:
    fs, path = _fs(source.url)
    with fs.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        return [Entry(i.filename, i.filename, -1, i.file_size) for i in zf.infolist()
                if not i.is_dir() and is_image_name(i.filename)]


class Reader:
    """Reads planned items' bytes; yields them in the order given, prefetching ahead.

    Loose files are read by a pool of threads (a Drive mount answers each open slowly);
    uncompressed tar members are read at their offsets, zip members through the zip's
    directory, compressed tar members by streaming the archive front to back.
    """

    def __init__(self, sources: list[Source], threads: int = 8, window: int = 64,
                 attempts: int = 3):
        self.sources, self.threads, self.window, self.attempts = sources, threads, window, attempts
        self._handles: dict[int, object] = {}
        self._filesystems: dict[str, object] = {}
        self._locks = collections.defaultdict(threading.Lock)
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="read")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def iter_bytes(self, items) -> Iterator[tuple[object, bytes | None, str]]:
        """(item, data, error) per item, in order; data is None when error says why."""
        run: list = []
        for item in items:
            if run and run[-1].source != item.source:
                yield from self._iter_run(run)
                run = []
            run.append(item)
        if run:
            yield from self._iter_run(run)

    def _iter_run(self, run: list):
        if self.sources[run[0].source].streaming:
            yield from self._stream(run)
            return
        pending: collections.deque = collections.deque()
        for item in run:
            pending.append((item, self._pool.submit(self._read_safe, item)))
            if len(pending) >= self.window:
                item0, fut = pending.popleft()
                yield (item0, *fut.result())
        while pending:
            item0, fut = pending.popleft()
            yield (item0, *fut.result())

    def _read_safe(self, item) -> tuple[bytes | None, str]:
        try:
            return retry_io(lambda: self._read(item), f"read {item.key}",
                            attempts=self.attempts), ""
        except Exception as e:  # noqa: BLE001 - reported per item, never fatal
            return None, f"{type(e).__name__}: {e}"

    def _read(self, item) -> bytes:
        src = self.sources[item.source]
        if src.kind == "folder":
            fs, root = self._fs_of(src.url)
            return fs.cat_file(f"{root.rstrip('/')}/{item.locator}")
        if src.kind == "list":
            fs, path = self._fs_of(item.locator)
            return fs.cat_file(path)
        with self._locks[item.source]:
            h = self._open(item.source)
            if src.kind == "zip":
                return h.read(item.locator)
            h.seek(item.offset)
            data = h.read(item.size)
        if len(data) != item.size:
            raise OSError(f"archive {src.url} ends early: member {item.locator} is truncated")
        return data

    def _fs_of(self, url: str):
        """(filesystem, path) for a URL; filesystems are cached by protocol."""
        proto = url.split("://", 1)[0] if "://" in url else "file"
        if proto not in self._filesystems:
            self._filesystems[proto] = _fs(url)[0]
        fs = self._filesystems[proto]
        return fs, fs._strip_protocol(url)

    def _open(self, idx: int):
        if idx not in self._handles:
            src = self.sources[idx]
            fs, path = _fs(src.url)
            f = fs.open(path, "rb", block_size=1 << 22)
            self._handles[idx] = zipfile.ZipFile(f) if src.kind == "zip" else f
        return self._handles[idx]

    def _stream(self, run: list):
        src = self.sources[run[0].source]
        wanted = {item.locator: item for item in run}
        order = iter(run)
        nxt = next(order)
        try:
            fs, path = _fs(src.url)
            with fs.open(path, "rb", block_size=1 << 22) as f, \
                    tarfile.open(fileobj=f, mode="r|*") as tf:
                for m in tf:
                    if m.name != nxt.locator:
                        continue
                    data = tf.extractfile(m).read()
                    yield nxt, data, ""
                    nxt = next(order, None)
                    if nxt is None:
                        return
        except (OSError, tarfile.TarError, EOFError) as e:
            err = f"{type(e).__name__} while streaming {src.url}: {e}"
        else:
            err = f"member not found in {src.url}"
        for item in [nxt, *order]:
            if item is not None and item.locator in wanted:
                yield item, None, err
