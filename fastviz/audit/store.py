"""The audit store: a Zarr v3 group of per-frame arrays, written chunk by chunk and resumable.

Layout (``N`` frames, ``H x W`` the model's input size, ``S`` curve steps, ``C`` frames per
chunk; every per-frame array is chunked by ``C`` frames and compressed with Blosc/zstd):

=====================================  ===========  ================================================
array                                  dtype        meaning
=====================================  ===========  ================================================
``frames/source``                      int32 (N,)   index into the attribute ``sources``
``frames/index``                       int64 (N,)   frame number within its source
``frames/time_s``                      float64 (N,) seconds from the source's start (the drive
                                                    log's ``time_s``, else index / fps)
``frames/prediction``                  float32 (N,) the target's score of the clean frame: the
                                                    output of a one-output model (radians for the
                                                    bundled steering model), a classifier's top
                                                    class logit
``frames/truth``                       float32 (N,) recorded steering of a drive log; NaN elsewhere
``frames/ok``                          bool (N,)    the frame was read; False where its source
                                                    failed part-way (its arrays hold NaN)
``maps/<method>``                      float16      raw saliency map at the model's input
                                       (N, H, W)    resolution (the method's own units)
``metrics/<method>/deletion_auc``      float32 (N,) mean output change as the map's top pixels are
                                                    deleted (higher: more faithful)
``metrics/<method>/insertion_auc``     float32 (N,) mean output change from the clean output as
                                                    they are restored (lower: more faithful)
``metrics/<method>/random_deletion_auc``  float32   the same for a random pixel order (the
``metrics/<method>/random_insertion_auc`` (N,)      reference; identical for every method)
``metrics/<method>/deletion_curve``    float32      the curves, ``S + 1`` points each
``metrics/<method>/insertion_curve``   (N, S+1)
``metrics/<method>/centroid``          float32      (row, column) of the map's |value| mass, px
                                       (N, 2)
``metrics/<method>/entropy``           float32 (N,) entropy of the |value| mass over pixels / log(H W),
                                                    in [0, 1]
``metrics/random/deletion_curve``      float32      the random order's curves
``metrics/random/insertion_curve``     (N, S+1)
``progress/done``                      bool         chunk ``c`` (frames ``c*C .. (c+1)*C``) is
                                       (ceil(N/C),) complete; one Zarr chunk per element
``progress/seconds``                   float64      seconds each chunk spent per method, then on
                                       (chunks, M+1) the metrics (method order: attribute
                                                    ``spec.methods``)
=====================================  ===========  ================================================

Attributes of the root group: ``fastviz`` (``format``, ``version``), ``spec`` (everything that
determines the arrays: inputs with their SHA-256, model name and weights SHA-256, methods and
their options, metric settings, chunking, batch, device type, memory budget, sanity settings),
``sources`` (path, kind, SHA-256, frames, fps, error), ``created``, ``completed`` (ISO 8601,
UTC), ``complete`` (bool), ``sanity`` (per method: rank correlations, pass/fail, threshold,
sample), ``model`` (name, class, weights SHA-256).

**Commit protocol.** A chunk's arrays are written first (Zarr's local store writes each chunk
file to a temporary name and renames it), then its ``progress/done`` element: a chunk marked
done is complete, and a chunk not marked is recomputed on resume. ``kill -9`` at any moment
loses at most the chunk in progress; leftover ``*.partial`` files of interrupted writes are
removed when the store is next opened for writing. Completion (``complete``, ``completed``,
``sanity``) is recorded last. One process writes a store at a time (an advisory ``flock`` on
the store's folder).

**Stores at a URL.** ``path`` may also be a URL fsspec knows (``s3://bucket/a.zarr``,
``file:///shared/a.zarr``): the same layout through Zarr's ``FsspecStore``, for Ray workers on
machines without a shared file system. Such a store is created in place (object stores cannot
rename a folder; its attributes are written last, so one cut short is not an audit store and is
refused) and is not locked against a second writer.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..tempfiles import OutputError, _temp_name, atomic_folder

__all__ = ["FORMAT", "AuditStore", "chunk_seconds", "chunk_sizes", "describe_difference", "is_store", "now", "open_store"]

#: The ``fastviz.format`` attribute of an audit store of this layout.
FORMAT = "fastviz.audit/1"

_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def now() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _compressor():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def chunk_sizes(frames: int, chunk: int) -> np.ndarray:
    """Frames in each store chunk: int64 ``(ceil(N / C),)``, all ``C`` but the last, which holds
    the rest."""
    n_chunks = -(-frames // chunk)
    sizes = np.full(n_chunks, chunk, dtype=np.int64)
    if n_chunks:
        sizes[-1] = frames - chunk * (n_chunks - 1)
    return sizes


def chunk_seconds(group) -> tuple[np.ndarray, int]:
    """What an audit store's chunks cost: ``(seconds, frames)``, ``seconds`` float64 ``(k, M+1)``
    the rows of ``progress/seconds`` of the ``k`` chunks done and fully timed (per method in the
    order of ``spec.methods``, then the metrics), ``frames`` the frames those chunks hold."""
    seconds = np.asarray(group["progress/seconds"][:], dtype=np.float64)
    done = np.asarray(group["progress/done"][:], dtype=bool)
    timed = done & np.isfinite(seconds).all(1)
    sizes = chunk_sizes(group["frames/ok"].shape[0], int(group.attrs["spec"]["chunk"]))
    return seconds[timed], int(sizes[timed].sum())


def is_url(path) -> bool:
    """Whether ``path`` names a store by URL (``s3://...``, ``gs://...``, ``file://...``: any
    protocol fsspec knows) rather than by a local path."""
    return isinstance(path, str) and "://" in path


def _storage_options(url: str) -> dict:
    # fsspec's local file system does not make folders by itself; Zarr writes chunks into them
    return {"auto_mkdir": True} if url.split("://", 1)[0] in ("file", "local") else {}


def _filesystem(url: str):
    """``(fsspec file system, path within it)`` of a store URL.

    Raises
    ------
    InputError
        For a protocol fsspec does not know or whose package is not installed.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **_storage_options(url))
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open audit store {url}: {exc}") from None


def open_group(location, mode: str):
    """The Zarr v3 group at a local path or a URL (``mode`` as for ``zarr.open_group``)."""
    import zarr

    if is_url(location):
        return zarr.open_group(location, mode=mode, zarr_format=3, storage_options=_storage_options(location))
    return zarr.open_group(str(location), mode=mode, zarr_format=3)


def _exists(location) -> bool:
    if is_url(location):
        fs, root = _filesystem(location)
        return bool(fs.exists(root))
    return Path(location).exists()


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a local path or a URL) is a fastviz audit store (a Zarr v3 group with this
    layout's format)."""
    import json

    try:
        if is_url(path):
            fs, root = _filesystem(path)
            text = fs.cat_file(root.rstrip("/") + "/zarr.json").decode()
        else:
            text = (Path(path) / "zarr.json").read_text()
        attrs = json.loads(text).get("attributes", {})
    except (OSError, ValueError, AttributeError, InputError):
        return False
    return isinstance(attrs, dict) and isinstance(attrs.get("fastviz"), dict) and \
        str(attrs["fastviz"].get("format", "")).startswith("fastviz.audit/")


def open_store(path: str | os.PathLike):
    """Open an audit store for reading: the root ``zarr.Group``.

    >>> import fastviz as fv                                       # doctest: +SKIP
    >>> store = fv.audit.open_store("audit.zarr")                   # doctest: +SKIP
    >>> store["maps/occlusion"][:10]      # float16 (10, 66, 200)  # doctest: +SKIP

    Raises
    ------
    InputFileNotFoundError, InputError
        If ``path`` does not exist or is not an audit store.
    """
    from ..errors import InputFileNotFoundError

    path = path if is_url(path) else Path(path)
    if not _exists(path):
        raise InputFileNotFoundError(f"audit store not found: {path}")
    if not is_store(path):
        raise InputError(f"{path} is not a fastviz audit store (no zarr.json with a fastviz format)")
    return open_group(path, "r")


_SPEC_NAMES = {
    "inputs": "inputs", "model": "model", "methods": "methods", "options": "method options",
    "metrics": "metric settings", "chunk": "frames per chunk", "batch": "batch", "device": "device type",
    "memory_budget": "memory budget", "max_frames": "max frames", "sanity": "sanity-check settings",
    "frames": "frame count", "input_size": "model input size",
}


def _short(value, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_difference(old: Mapping, new: Mapping) -> str | None:
    """A one-line description of the first difference between two specs, or ``None``."""
    for key in list(dict.fromkeys([*old, *new])):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = _SPEC_NAMES.get(key, key)
        if key == "inputs" and isinstance(a, list) and isinstance(b, list):
            if [i.get("path") for i in a] != [i.get("path") for i in b]:
                return (f"inputs differ: the store has {', '.join(i.get('path', '?') for i in a)}; "
                        f"this run has {', '.join(i.get('path', '?') for i in b)}")
            for i, j in zip(a, b):
                if i != j:
                    return f"input {j.get('path')} changed since the store was started (SHA-256 {_short(i.get('sha256'), 16)} -> {_short(j.get('sha256'), 16)})"
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in dict.fromkeys([*a, *b]):
                if a.get(sub) != b.get(sub):
                    return f"{name} differ: {sub} was {_short(a.get(sub))}, now {_short(b.get(sub))}"
        return f"{name} differ: the store has {_short(a)}, this run has {_short(b)}"
    return None


class AuditStore:
    """An audit store open for writing (see the module description for its layout).

    Use :meth:`create` or :meth:`resume`; as a context manager it holds the store's lock.
    """

    def __init__(self, path: Path, group) -> None:
        self.path = path
        self.group = group
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        spec: dict,
        sources: list[dict],
        frames: int,
        size: tuple[int, int],
        methods: Sequence[str],
        steps: int,
        chunk: int,
        model: dict,
        overwrite: bool = False,
    ) -> AuditStore:
        """Create a new store at ``path``: built under a temporary name beside it, renamed when its
        layout is complete. An existing store is replaced only with ``overwrite``; anything else
        at ``path`` (except an empty folder) is refused.

        Parameters
        ----------
        path : path
            The store folder.
        spec : dict
            Every setting that determines the arrays (JSON), compared by :meth:`resume`.
        sources : list of dict
            The inputs (:meth:`fastviz.audit.sources.AuditSource.as_dict`).
        frames : int
            ``N``, frames in the store.
        size : (int, int)
            ``(H, W)`` of the maps, the model's input size in pixels.
        methods : sequence of str
            One ``maps/<method>`` and ``metrics/<method>/...`` group each.
        steps : int
            ``S``: curves have ``S + 1`` points.
        chunk : int
            ``C``, frames per Zarr chunk and per completion record.
        model : dict
            The ``model`` attribute (name, class, weights SHA-256, output units).
        overwrite : bool
            Replace an existing audit store.

        Raises
        ------
        OutputError
            When the store cannot be written (missing folder, read-only or full file system).
        InputError
            When ``path`` exists (without ``overwrite``) or is not an audit store.
        """
        if is_url(path):
            return cls._create_at_url(path, spec=spec, sources=sources, frames=frames, size=size, methods=methods,
                                      steps=steps, chunk=chunk, model=model, overwrite=overwrite)
        path = Path(path)
        old: Path | None = None
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            pass  # an empty folder: the store is built under a temporary name and renamed onto it
        elif path.exists() or path.is_symlink():
            if not is_store(path) or path.is_symlink():
                raise InputError(f"{path} exists and is not a fastviz audit store; name another path")
            if not overwrite:
                raise InputError(f"{path} is an audit store already; pass --overwrite to start it again")
        if is_store(path) and not path.is_symlink():
            # replacing a store: set the old one aside under a temporary name (removed as stale
            # if this process dies), build the new one, then delete the old one; on an error the
            # old one is put back
            old = path.parent / _temp_name(path, ".old")
            try:
                os.replace(path, old)
            except OSError as exc:
                raise OutputError(f"cannot replace audit store {path}: {exc.strerror}", exc.errno) from None
        try:
            with atomic_folder(path, what="audit store") as out:
                # "w-" (create), not "w": zarr's "w" clears a local store by removing its folder and
                # making a new one, whose inode may differ, and the commit then rightly refuses the
                # temporary as replaced by someone else (seen once under load in the full suite)
                _build(open_group(out.path, "w-"), spec=spec, sources=sources, frames=frames, size=size,
                       methods=methods, steps=steps, chunk=chunk, model=model)
        except BaseException:
            if old is not None and not path.exists():
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return cls(path, open_group(path, "r+"))

    @classmethod
    def _create_at_url(cls, url: str, *, overwrite: bool, **layout) -> AuditStore:
        """:meth:`create` at a URL: not atomic (object stores have no rename), so the layout is
        written first and the attributes that make it an audit store last; a store cut short
        while being created is not an audit store and is refused, named, on the next run."""
        fs, root = _filesystem(url)
        if fs.exists(root):
            if not is_store(url):
                raise InputError(f"{url} exists and is not a fastviz audit store; name another URL")
            if not overwrite:
                raise InputError(f"{url} is an audit store already; pass --overwrite to start it again")
            fs.rm(root, recursive=True)
        try:
            _build(open_group(url, "w"), **layout)
        except OSError as exc:
            raise OutputError(f"cannot write audit store {url}: {exc.strerror or exc}", exc.errno) from None
        return cls(url, open_group(url, "r+"))

    @classmethod
    def resume(cls, path: str | os.PathLike, spec: dict) -> AuditStore:
        """Open an existing store to go on writing it, after checking that ``spec`` matches.

        Raises
        ------
        InputError
            If it is not an audit store, or it was started with other inputs, model or options
            (the message names the first difference).
        """
        path = path if is_url(path) else Path(path)
        if not is_store(path):
            raise InputError(f"{path} exists and is not a fastviz audit store; name another path")
        g = open_group(path, "r+")
        fmt = g.attrs.get("fastviz", {}).get("format")
        if fmt != FORMAT:
            raise InputError(f"{path} is an audit store of another layout ({fmt}); this fastviz writes {FORMAT}")
        difference = describe_difference(g.attrs.get("spec", {}), spec)
        if difference is not None:
            raise InputError(f"{path} was started with other settings: {difference}; pass --overwrite to start again")
        return cls(path, g)

    # ------------------------------------------------------------------ lock

    def __enter__(self) -> AuditStore:
        if is_url(self.path):  # no lock at a URL: one driver per store is the user's to keep
            return self
        # an advisory lock on the store's folder itself (its inode never changes; zarr.json is
        # replaced on every attribute update), released by the kernel when the process dies
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise InputError(f"audit store {self.path} is being written by another process") from None
            raise
        self._lock_fd = fd
        self.remove_partial()
        return self

    def __exit__(self, *exc_info) -> bool:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        return False

    def remove_partial(self) -> list[Path]:
        """Remove the temporary ``*.partial`` files that interrupted Zarr writes left."""
        removed = []
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                if _PARTIAL.search(name):
                    p = Path(root) / name
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                    removed.append(p)
        return removed

    # ------------------------------------------------------------------ writing

    @property
    def attrs(self):
        return self.group.attrs

    @property
    def chunk(self) -> int:
        return int(self.group["frames/ok"].chunks[0])

    @property
    def frames(self) -> int:
        return int(self.group["frames/ok"].shape[0])

    def done(self) -> np.ndarray:
        """bool ``(chunks,)``: which chunks are complete."""
        return np.asarray(self.group["progress/done"][:], dtype=bool)

    def chunk_range(self, c: int) -> tuple[int, int]:
        """Frames ``g0 .. g1`` of chunk ``c``."""
        return c * self.chunk, min((c + 1) * self.chunk, self.frames)

    def write_chunk(self, c: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write chunk ``c`` of each named array (``"maps/occlusion"``, ...), then mark it done.

        Raises
        ------
        OutputError
            When a write fails (the chunk stays not done).
        """
        self.write_arrays(c, {k: v for k, v in arrays.items() if k != "progress/seconds"})
        self.mark_done(c, arrays["progress/seconds"])

    def write_arrays(self, c: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write chunk ``c`` of each named per-frame array, without marking it done: the first half
        of the commit, done by whoever computed the chunk (a Ray worker, or :meth:`write_chunk`).

        Raises
        ------
        OutputError
            When a write fails.
        """
        g0, g1 = self.chunk_range(c)
        try:
            for name, values in arrays.items():
                if name.startswith("progress/"):
                    raise ValueError(f"{name} is the commit record: written by mark_done")
                self.group[name][g0:g1] = values
        except OSError as exc:
            raise OutputError(f"cannot write audit store {self.path}: {exc.strerror or exc}", exc.errno) from None

    def mark_done(self, c: int, seconds: np.ndarray) -> None:
        """The second half of the commit: chunk ``c``'s seconds (per method, then the metrics), then
        its completion record. Called only after every array of the chunk is written.

        Raises
        ------
        OutputError
            When a write fails (the chunk stays not done).
        """
        try:
            self.group["progress/seconds"][c] = seconds
            self.group["progress/done"][c] = True
        except OSError as exc:
            raise OutputError(f"cannot write audit store {self.path}: {exc.strerror or exc}", exc.errno) from None

    def update(self, **attrs) -> None:
        """Update root attributes (JSON values).

        Raises
        ------
        OutputError
            When the write fails.
        """
        try:
            self.group.attrs.update(attrs)
        except OSError as exc:
            raise OutputError(f"cannot write audit store {self.path}: {exc.strerror or exc}", exc.errno) from None


def _build(g, *, spec: dict, sources: list[dict], frames: int, size: tuple[int, int], methods: Sequence[str],
           steps: int, chunk: int, model: dict) -> None:
    """Every array of the layout in group ``g``, then the attributes (last: they make it a store)."""
    h, w = size
    n_chunks = -(-frames // chunk)
    comp = _compressor()

    def array(name, shape, chunks, dtype, fill):
        g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=comp)

    array("frames/source", (frames,), (chunk,), "int32", -1)
    array("frames/index", (frames,), (chunk,), "int64", -1)
    array("frames/time_s", (frames,), (chunk,), "float64", np.nan)
    array("frames/prediction", (frames,), (chunk,), "float32", np.nan)
    array("frames/truth", (frames,), (chunk,), "float32", np.nan)
    array("frames/ok", (frames,), (chunk,), "bool", False)
    for m in methods:
        array(f"maps/{m}", (frames, h, w), (chunk, h, w), "float16", np.nan)
        for name in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
                     "entropy"):
            array(f"metrics/{m}/{name}", (frames,), (chunk,), "float32", np.nan)
        for name in ("deletion_curve", "insertion_curve"):
            array(f"metrics/{m}/{name}", (frames, steps + 1), (chunk, steps + 1), "float32", np.nan)
        array(f"metrics/{m}/centroid", (frames, 2), (chunk, 2), "float32", np.nan)
    for name in ("deletion_curve", "insertion_curve"):
        array(f"metrics/random/{name}", (frames, steps + 1), (chunk, steps + 1), "float32", np.nan)
    array("progress/done", (n_chunks,), (1,), "bool", False)
    array("progress/seconds", (n_chunks, len(methods) + 1), (1, len(methods) + 1), "float64", np.nan)
    from .. import __version__

    g.attrs.update({
        "fastviz": {"format": FORMAT, "version": __version__},
        "spec": spec,
        "model": model,
        "sources": sources,
        "created": now(),
        "completed": None,
        "complete": False,
        "sanity": None,
    })
