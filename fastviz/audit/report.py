"""The audit report: one self-contained HTML page that shows what an audit store found.

``fastviz report STORE.zarr -o report.html`` (or :func:`write_report`, also
``fv.audit.write_report``) reads an audit store (:mod:`fastviz.audit.store`) and writes a single
HTML file (Jinja2 template ``templates/report.html.j2``) whose pictures are embedded PNGs
(``data:`` URIs; plots drawn by matplotlib): the page requests nothing from any network address
when opened and can be mailed or archived as it is. Its sections:

- **summary**: model, weights SHA-256, sources, frames, methods, wall time and cost per frame;
- **prediction**: the model's output against the recorded steering over time, R² and RMSE, and
  a histogram of the error;
- **where the model looks**: per method the dataset-mean map over a representative frame, and
  the mean maps of frames steering left, straight and right;
- **worst frames** (largest |error|) and a **random sample**, each with every method's overlay;
- **strategies** (SpRAy, Lapuschkin et al., Nature Communications 2019,
  :mod:`fastviz.audit.strategies`): per method the clusters of its maps, the number of clusters
  read from the eigengap, each cluster's size, mean map, mean error and examples;
- **scene groups** (:mod:`fastviz.audit.scenes`): frames grouped by appearance alone (dense SIFT,
  a GMM vocabulary, improved Fisher vectors or bags of visual words, k-means), each group's
  size, error, mean maps and examples;
- **faithfulness** (deletion/insertion against the random pixel order) and the **sanity check**
  (model-parameter randomisation), each with a sentence on how to read it;
- **cost**: milliseconds per frame of each method and of the metrics.

Sizes stay bounded for any number of frames: the store's per-frame scalars (``(N,)`` arrays)
are read whole, the maps chunk by chunk once (the mean maps are exact over every frame; the maps
of the frames the page shows, and of an *analysis sample* of at most ``analysis`` frames for
SpRAy and the scene groups, are kept on the way). The page holds a fixed number of pictures
(``worst + sample`` frames, a few per cluster and group), so it opens as fast for 100,000 frames
as for 100.

**Frames.** The store holds maps, not frames. The pictures of frames are read again from the
sources the store names (each checked against its recorded SHA-256 first); a source that is
missing or changed is named in the page and its frames are drawn as maps alone, on grey.
Maps are placed back onto a frame inside the crop the model sees (the store's ``model.crop``;
for stores written before it was recorded, the bundled model's of the same name, else the whole
frame).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import metrics as fm
from .store import chunk_seconds

__all__ = ["DEFAULT_ANALYSIS", "DEFAULT_SAMPLE", "DEFAULT_WORST", "ReportResult", "check_output",
           "mean_maps", "steering_classes", "unit_max", "write_report"]

#: Frames shown among the largest errors, and in the random sample.
DEFAULT_WORST = 8
DEFAULT_SAMPLE = 8
#: Most maps (and frames) in the analysis sample that SpRAy and the scene groups work on.
DEFAULT_ANALYSIS = 400
#: Steering beyond +-5 degrees counts as a bend (the seeds' ``grad_cam_loss`` threshold, also
#: :class:`fastviz.targets.Steering`'s default).
BEND_DEG = 5.0
#: Longest side of a frame picture in the page, pixels (small frames are enlarged to it).
THUMB_SIDE = 192
#: Examples shown per cluster and per scene group.
EXAMPLES = 4
SCENE_KINDS = ("fisher", "bow", "none")

CLASS_NAMES = ("left", "straight", "right")


@dataclass
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    path : Path
        The HTML file.
    frames : int
        Frames of the store the report covers (computed and read).
    images : int
        Pictures embedded in the page.
    bytes : int
        Size of the page.
    seconds : float
        Wall time to make it.
    notes : list of str
        What the page could not show and why (a missing source, no recorded steering, ...).
    """

    path: Path
    frames: int
    images: int
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- aggregates


def unit_max(maps: np.ndarray) -> np.ndarray:
    """``|map| / max |map|`` per map: float32 ``(N, H, W)`` in [0, 1]; an all-zero map stays zero.

    Every frame then weighs the same in a mean, whatever its map's scale (occlusion's output
    units differ from frame to frame, Grad-CAM's and VisualBackProp's are arbitrary).
    """
    a = np.abs(np.asarray(maps, dtype=np.float32))
    peak = a.reshape(a.shape[0], -1).max(1) if a.size else np.zeros(a.shape[0], np.float32)
    scale = np.divide(1.0, peak, out=np.zeros_like(peak), where=peak > 0)
    return a * scale[:, None, None]


def steering_classes(steering: np.ndarray, bend_deg: float = BEND_DEG) -> np.ndarray:
    """Steering angles (radians, positive = right) to classes: int8 ``(N,)``, 0 left (below
    ``-bend_deg``), 1 straight, 2 right (above ``+bend_deg``), -1 where the angle is NaN."""
    s = np.asarray(steering, dtype=np.float64)
    t = math.radians(bend_deg)
    out = np.full(s.shape, -1, dtype=np.int8)
    out[s < -t] = 0
    out[np.abs(s) <= t] = 1
    out[s > t] = 2
    return out


def mean_maps(maps_array, use: np.ndarray, classes: np.ndarray, chunk: int, keep: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """The dataset-mean map and the per-class mean maps of one method, in one pass over its maps
    chunk by chunk.

    Parameters
    ----------
    maps_array : array-like (N, H, W)
        A store's ``maps/<method>`` (Zarr array) or any array sliced along frames.
    use : numpy.ndarray
        bool ``(N,)``: frames to count (computed and read).
    classes : numpy.ndarray
        int ``(N,)``: 0, 1, 2 (:func:`steering_classes`), -1 for none.
    chunk : int
        Frames read at once (the store's chunk).
    keep : numpy.ndarray, optional
        Sorted frame numbers whose raw maps are returned too.

    Returns
    -------
    mean : numpy.ndarray
        float32 ``(H, W)``: mean of :func:`unit_max` over the frames used (zeros if none).
    class_means : numpy.ndarray
        float32 ``(3, H, W)``, the same per class (zeros for an empty class).
    counts : numpy.ndarray
        int64 ``(4,)``: frames used, then per class.
    kept : dict
        frame number -> float32 ``(H, W)`` raw map, for ``keep``.
    """
    n, h, w = maps_array.shape
    total = np.zeros((h, w), np.float64)
    per_class = np.zeros((3, h, w), np.float64)
    counts = np.zeros(4, np.int64)
    kept: dict[int, np.ndarray] = {}
    keep = np.asarray([] if keep is None else keep, dtype=np.int64)
    for g0 in range(0, n, chunk):
        g1 = min(g0 + chunk, n)
        sel = np.flatnonzero(use[g0:g1])
        want = keep[(keep >= g0) & (keep < g1)]
        if sel.size == 0 and want.size == 0:
            continue  # chunk not computed: not read
        block = np.asarray(maps_array[g0:g1], dtype=np.float32)
        for i in want:
            kept[int(i)] = block[i - g0].copy()
        if sel.size == 0:
            continue
        u = unit_max(block[sel])
        total += u.sum(0, dtype=np.float64)
        counts[0] += sel.size
        cls = classes[g0:g1][sel]
        for k in range(3):
            pick = cls == k
            if pick.any():
                per_class[k] += u[pick].sum(0, dtype=np.float64)
                counts[1 + k] += int(pick.sum())
    mean = (total / counts[0]).astype(np.float32) if counts[0] else total.astype(np.float32)
    class_means = np.stack([per_class[k] / counts[1 + k] if counts[1 + k] else per_class[k]
                            for k in range(3)]).astype(np.float32)
    return mean, class_means, counts, kept


# --------------------------------------------------------------------------- pictures


def _png(img: np.ndarray) -> str:
    """RGB uint8 image -> ``data:image/png;base64,...``."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise InputError("could not encode a picture as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


class _Pictures:
    """Frame pictures with maps drawn over them, all the same size."""

    def __init__(self, crop, input_size: tuple[int, int]) -> None:
        from ..models.pilotnet import FramePreprocess

        self.view = FramePreprocess(size=input_size, crop=crop)  # its region(): the part the model sees
        self.input_size = input_size

    def region(self, frame: np.ndarray) -> tuple[int, int, int, int]:
        return self.view.region(*frame.shape[:2])

    def fit(self, frame: np.ndarray) -> np.ndarray:
        """The frame scaled toward a longest side of :data:`THUMB_SIDE`: enlarged by the largest
        whole factor (nearest neighbour) when that is 2 or more, else resized to it (area
        interpolation to shrink, nearest neighbour to enlarge)."""
        import cv2

        from .. import render as rd

        h, w = frame.shape[:2]
        s = THUMB_SIDE / max(h, w)
        if s >= 2:
            return rd.upscale(frame, int(s))
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)

    def blank(self) -> np.ndarray:
        """A grey frame of the model's input aspect, for maps whose frame could not be read."""
        h, w = self.input_size
        return np.full((h, w, 3), 128, np.uint8)

    def overlay(self, frame: np.ndarray | None, m: np.ndarray, signed: bool | None) -> str:
        from .. import render as rd

        if frame is None:
            frame, region = self.blank(), None
        else:
            region = self.region(frame)
        big = self.fit(frame)
        if region is not None:
            sy, sx = big.shape[0] / frame.shape[0], big.shape[1] / frame.shape[1]
            y0, y1, x0, x1 = region
            region = (round(y0 * sy), max(round(y1 * sy), round(y0 * sy) + 1),
                      round(x0 * sx), max(round(x1 * sx), round(x0 * sx) + 1))
        m = np.asarray(m, dtype=np.float32)
        if not np.isfinite(m).all() or not np.any(m):
            return _png(big)  # nothing to draw: the frame alone
        return _png(rd.overlay(big, m, region=region, signed=signed, clip=(1.0, 99.0) if signed is not False else None,
                               alpha=0.6))

    def plain(self, frame: np.ndarray | None) -> str:
        return _png(self.fit(self.blank() if frame is None else frame))


# --------------------------------------------------------------------------- reading


def _crop(attrs: dict) -> tuple[tuple[float, float, float, float], str | None]:
    model = attrs.get("model") or {}
    crop = model.get("crop")
    if crop is not None and len(crop) == 4:
        return tuple(float(v) for v in crop), None
    from .. import models

    if model.get("name") in models.available():
        return tuple(models.load(model["name"]).transform.crop), None
    return (0.0, 1.0, 0.0, 1.0), ("the store does not record the crop its model takes; maps are drawn over whole "
                                  "frames")


def _read_frames(sources: list[dict], source: np.ndarray, index: np.ndarray, wanted: np.ndarray,
                 crop, input_size: tuple[int, int], progress) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], list[str]]:
    """Frames ``wanted`` (global numbers) read again from the store's sources, each source checked
    against its recorded SHA-256. Returns ``(pictures, views, notes)``: the frames as recorded,
    the model's views of them (the crop resized to the input size, uint8 RGB) and what could not
    be read."""
    import cv2

    from .sources import describe
    from ..video import open_source

    pictures: dict[int, np.ndarray] = {}
    views: dict[int, np.ndarray] = {}
    notes: list[str] = []
    h_in, w_in = input_size
    checked: dict[str, str | None] = {}  # path -> why it cannot be used (None: it can), checked once
    unread: dict[tuple[str, str], int] = {}  # (path, why) -> frames of the report drawn without it
    view = _Pictures(crop, input_size)
    for k in np.unique(source[wanted]):
        sel = wanted[source[wanted] == k]
        src = sources[int(k)] if int(k) < len(sources) else {}
        path = Path(str(src.get("path", "")))
        key = f"{path}\0{src.get('sha256')}"
        if key not in checked:
            checked[key] = None
            if not path.exists():
                checked[key] = "is not there any more"
            else:
                try:
                    if describe(path).sha256 != src.get("sha256"):
                        checked[key] = "changed since the audit (SHA-256 differs)"
                except InputError as exc:
                    checked[key] = f"cannot be read ({exc})"
        if checked[key] is not None:
            unread[(str(path), checked[key])] = unread.get((str(path), checked[key]), 0) + int(sel.size)
            continue
        by_index = {int(index[g]): int(g) for g in sel}
        try:
            for i, frame in open_source(path).frames_at(sorted(by_index)):
                g = by_index[i]
                pictures[g] = frame
                y0, y1, x0, x1 = view.region(frame)
                views[g] = cv2.resize(frame[y0:y1, x0:x1], (w_in, h_in), interpolation=cv2.INTER_AREA)
                progress(1)
        except InputError as exc:  # a decode error part-way: keep what was read
            notes.append(f"source {path} failed while its frames were read again ({exc})")
    for (path, why), count in unread.items():
        notes.append(f"source {path} {why}: its {count} frames in the report are maps alone")
    return pictures, views, notes


def _spread(candidates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``k`` of ``candidates``, drawn without replacement, sorted."""
    if candidates.size <= k:
        return np.sort(candidates)
    return np.sort(rng.choice(candidates, k, replace=False))


def _closest(features: np.ndarray, members: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` members (row numbers) whose feature rows are nearest their mean."""
    centre = features[members].mean(0)
    d = ((features[members] - centre) ** 2).sum(1)
    return members[np.argsort(d, kind="stable")[:k]]


# --------------------------------------------------------------------------- the report


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "–"
    if abs(v) >= 10 ** digits:  # no exponent for large values: 1,065 rather than 1.06e+03
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _deg(radians: float) -> str:
    return "–" if radians is None or not math.isfinite(radians) else f"{math.degrees(radians):.2f}°"


def _out(value: float, steering: bool, digits: int = 3) -> str:
    """A value in the model's output units: degrees for a steering model (radians stored), else
    ``digits`` significant digits; "–" when not finite."""
    return _deg(value) if steering else _fmt(value, digits)


def _mean_abs(values: np.ndarray) -> float:
    """Mean of the finite ``|values|``; NaN (without numpy's warning) when there is none."""
    a = np.abs(values[np.isfinite(values)])
    return float(a.mean()) if a.size else float("nan")


def write_report(
    store: str | Path,
    output: str | Path,
    *,
    worst: int = DEFAULT_WORST,
    sample: int = DEFAULT_SAMPLE,
    analysis: int = DEFAULT_ANALYSIS,
    scenes: str = "fisher",
    scene_groups: int | None = None,
    strategies: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> ReportResult:
    """Write the HTML report of an audit store.

    Parameters
    ----------
    store : str or Path
        An audit store (:func:`fastviz.audit`); an incomplete one gives a report of the chunks
        done so far, said so at the top.
    output : str or Path
        The ``.html`` file to write (atomically: a temporary file in the same folder, checked,
        then renamed).
    worst, sample : int
        Frames shown with the largest |prediction - truth| and drawn at random (>= 0).
    analysis : int
        Most frames in the sample SpRAy and the scene groups work on (>= 3 for either to run).
    scenes : {"fisher", "bow", "none"}
        Frame representation of the scene groups: improved Fisher vectors, bags of visual words,
        or no scene groups.
    scene_groups : int, optional
        Number of scene groups; default the k in 2..6 with the best silhouette score.
    strategies : bool
        Run SpRAy per method.
    seed : int
        Seed of every random choice (samples, vocabulary, clusterings): the same store and seed
        give the same page.
    progress : bool
        A tqdm bar on stderr.

    Returns
    -------
    ReportResult

    Raises
    ------
    InputFileNotFoundError, InputError
        If ``store`` is not an audit store, holds no computed frame, or an argument is bad; if
        scikit-learn, matplotlib or Jinja2 is missing (``pip install 'fastviz[report]'``).
    fastviz.tempfiles.OutputError
        When the page cannot be written (missing folder, read-only file system, disk full):
        nothing is left behind.
    """
    from tqdm import tqdm

    from ..tempfiles import atomic_output
    from .store import is_url, open_store

    started = time.perf_counter()
    for name, value in (("worst", worst), ("sample", sample), ("analysis", analysis)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} must be an integer >= 0, got {value!r}")
    if scenes not in SCENE_KINDS:
        raise InputError(f"scenes must be one of {', '.join(SCENE_KINDS)}, got {scenes!r}")
    if scene_groups is not None and (isinstance(scene_groups, bool) or int(scene_groups) < 1):
        raise InputError(f"scene_groups must be >= 1, got {scene_groups!r}")
    output = check_output(output)
    jinja2 = _require()

    g = open_store(store)
    attrs = dict(g.attrs)
    spec = attrs.get("spec") or {}
    names = list(spec.get("methods") or [])
    options = spec.get("options") or {}
    chunk = int(spec.get("chunk") or 1)
    ok = np.asarray(g["frames/ok"][:], dtype=bool)
    n = ok.size
    done = np.asarray(g["progress/done"][:], dtype=bool)
    computed = np.repeat(done, chunk)[:n]
    use = ok & computed
    if not use.any():
        raise InputError(f"audit store {store} holds no computed frame yet: run the audit first")
    prediction = np.asarray(g["frames/prediction"][:], dtype=np.float64)
    truth = np.asarray(g["frames/truth"][:], dtype=np.float64)
    time_s = np.asarray(g["frames/time_s"][:], dtype=np.float64)
    source = np.asarray(g["frames/source"][:], dtype=np.int64)
    index = np.asarray(g["frames/index"][:], dtype=np.int64)
    prediction[~use] = np.nan
    model_attrs = attrs.get("model") or {}
    units = model_attrs.get("output_units") or "output units"
    steering = units == "rad"
    sources = list(attrs.get("sources") or [])
    input_size = tuple(spec.get("input_size") or g[f"maps/{names[0]}"].shape[1:])
    crop, crop_note = _crop(attrs)
    notes: list[str] = [] if crop_note is None else [crop_note]
    rng = np.random.default_rng(seed)

    has_truth = np.isfinite(truth) & use
    error = prediction - truth
    steer_by = "recorded steering" if has_truth.any() else "predicted steering"
    classes = steering_classes(np.where(has_truth, truth, prediction)) if steering else np.full(n, -1, np.int8)
    classes[~use] = -1

    # which frames the page shows, and the analysis sample
    frames_used = np.flatnonzero(use)
    worst_idx = np.array([], dtype=np.int64)
    if has_truth.any() and worst > 0:
        cand = np.flatnonzero(has_truth)
        worst_idx = cand[np.argsort(-np.abs(error[cand]), kind="stable")[:worst]]
    sample_idx = _spread(frames_used, sample, rng)
    analysis_idx = _spread(frames_used, analysis, rng)
    keep = np.unique(np.concatenate([worst_idx, sample_idx, analysis_idx])).astype(np.int64)

    steps = len(names) + 3
    bar = tqdm(total=steps + keep.size, unit="step", disable=not progress, desc="report", dynamic_ncols=True)
    try:
        # one pass over each method's maps
        means: dict[str, dict] = {}
        kept: dict[str, dict[int, np.ndarray]] = {}
        for m in names:
            mean, class_means, counts, kept[m] = mean_maps(g[f"maps/{m}"], use, classes, chunk, keep)
            means[m] = {"mean": mean, "classes": class_means, "counts": counts}
            bar.update(1)

        pictures, views, read_notes = _read_frames(sources, source, index, keep, crop, input_size, bar.update)
        notes += read_notes
        pics = _Pictures(crop, input_size)
        signed = {m: _signed(m, options.get(m) or {}) for m in names}

        def row(g_: int) -> dict:
            frame = pictures.get(g_)
            return {
                "frame": int(g_),
                "source": Path(str(sources[source[g_]].get("path", "?"))).name if source[g_] < len(sources) else "?",
                "index": int(index[g_]),
                "time": _fmt(time_s[g_], 4),
                "prediction": _out(prediction[g_], steering, 4),
                "truth": _out(truth[g_], steering, 4),
                "error": _out(error[g_], steering, 4),
                "picture": pics.plain(frame),
                "overlays": [{"method": m, "src": pics.overlay(frame, kept[m][g_], signed[m])} for m in names],
            }

        # the analysis sample's maps, as SpRAy features, for representatives and clusters
        analysis_idx = np.array([i for i in analysis_idx if all(np.isfinite(kept[m][i]).all() for m in names)],
                                dtype=np.int64)
        from .strategies import map_features

        features = {m: map_features(np.stack([kept[m][i] for i in analysis_idx])) if analysis_idx.size else None
                    for m in names}

        def representative(m: str, members: np.ndarray, target: np.ndarray) -> int | None:
            """The analysis frame (of ``members``, row numbers) whose unit-sum map is nearest ``target``
            (maps that are zero everywhere excluded: they would be near any diffuse mean)."""
            if members.size == 0 or features[m] is None:
                return None
            members = members[features[m][members].sum(1) > 0]
            if members.size == 0:
                return None
            t = map_features(target[None])[0]
            d = ((features[m][members] - t) ** 2).sum(1)
            return int(analysis_idx[members[int(np.argmin(d))]])

        looks = []
        rows_all = np.arange(analysis_idx.size)
        cls_analysis = classes[analysis_idx] if analysis_idx.size else np.array([], np.int8)
        for m in names:
            mm = means[m]
            rep = representative(m, rows_all, mm["mean"])
            panels = [{"label": f"all frames ({mm['counts'][0]})",
                       "src": pics.overlay(pictures.get(rep) if rep is not None else None, mm["mean"], False)}]
            if steering:
                for k, cname in enumerate(CLASS_NAMES):
                    cnt = int(mm["counts"][1 + k])
                    if cnt == 0:
                        panels.append({"label": f"{cname} (no frame)", "src": None})
                        continue
                    rep_k = representative(m, np.flatnonzero(cls_analysis == k), mm["classes"][k])
                    panels.append({"label": f"{cname} ({cnt})",
                                   "src": pics.overlay(pictures.get(rep_k) if rep_k is not None else None,
                                                       mm["classes"][k], False)})
            looks.append({"method": m, "panels": panels})
        bar.update(1)

        # strategies (SpRAy)
        spray_sections = []
        if strategies and analysis_idx.size >= 3:
            spray_sections = _strategies(names, analysis_idx, kept, error, pictures, pics, signed, seed, steering)
        elif strategies:
            notes.append(f"SpRAy needs at least 3 computed frames; the store has {analysis_idx.size}")
        bar.update(1)

        # scene groups
        scene = None
        if scenes != "none":
            scene, scene_note = _scenes(scenes, scene_groups, names, analysis_idx, views, kept, error, pictures, pics,
                                        seed, steering)
            if scene_note:
                notes.append(scene_note)
        bar.update(1)

        plt = _pyplot()
        context = {
            "title": f"fastviz audit report — {str(store).rstrip('/').rsplit('/', 1)[-1]}",
            "generated": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "store": str(store) if is_url(store) else str(Path(str(store)).absolute()),
            "summary": _summary(attrs, spec, names, n, use, done, chunk, g),
            "complete": bool(attrs.get("complete")),
            "done_chunks": int(done.sum()),
            "chunks": int(done.size),
            "notes": notes,
            "prediction": _prediction_section(plt, prediction, truth, time_s, source, sources, use, units, steering),
            "looks": looks,
            "steering": steering,
            "steer_by": steer_by,
            "bend_deg": BEND_DEG,
            "worst": [row(i) for i in worst_idx],
            "sample": [row(i) for i in sample_idx],
            "methods": names,
            "strategies": spray_sections,
            "strategies_on": strategies,
            "analysis": int(analysis_idx.size),
            "scenes": scene,
            "scenes_kind": scenes,
            "faithfulness": _faithfulness(plt, g, names, use, units),
            "sanity": _sanity_rows(attrs, names),
            "sanity_threshold": _fmt((attrs.get("sanity") or {}).get("threshold",
                                                                    (spec.get("sanity") or {}).get("threshold"))),
            "sanity_run": bool((attrs.get("sanity") or {}).get("methods")),
            "cost": _cost(g, names),
        }
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                                 autoescape=jinja2.select_autoescape(("html", "j2")), undefined=jinja2.StrictUndefined,
                                 trim_blocks=True, lstrip_blocks=True)
        page = env.get_template("report.html.j2").render(**context)
    finally:
        bar.close()

    data = page.encode("utf-8")
    images = page.count('src="data:image/png;base64,')

    def check(out) -> None:
        import os

        from ..tempfiles import OutputError

        size = os.fstat(out.fd).st_size
        if size != len(data):
            raise OutputError(f"{out.final}: {size} of {len(data)} bytes written")

    with atomic_output(output, check=check, what="report") as out:
        out.write(data)
    return ReportResult(path=output, frames=int(use.sum()), images=images, bytes=len(data),
                        seconds=time.perf_counter() - started, notes=notes)


def check_output(output: str | Path) -> Path:
    """The report's path, checked before any work: an ``.html`` name in an existing folder, not
    a folder itself, and the report's libraries installed.

    Raises
    ------
    InputError
        Naming what is wrong.
    """
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"the report is an HTML page: name it .html, not {output.name}")
    if output.is_dir():
        raise InputError(f"cannot write the report to {output}: it is a folder")
    if not output.parent.is_dir():
        raise InputError(f"cannot write {output}: folder {output.parent} does not exist")
    _require()
    return output


def _require():
    import importlib.util

    missing = [p for p, mod in (("jinja2", "jinja2"), ("matplotlib", "matplotlib"), ("scikit-learn", "sklearn"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise InputError(f"the report needs {', '.join(missing)}: pip install 'fastviz[report]'")
    import jinja2

    return jinja2


def _signed(method: str, options: dict) -> bool | None:
    from ..overlay import _signed as signed

    return signed(method, options)


def _summary(attrs: dict, spec: dict, names: list[str], n: int, use: np.ndarray, done: np.ndarray, chunk: int, g) -> dict:
    model = attrs.get("model") or {}
    seconds, frames_timed = chunk_seconds(g)
    total_s = float(seconds.sum()) if len(seconds) else float("nan")
    sources = []
    for s in attrs.get("sources") or []:
        sources.append({"path": s.get("path"), "kind": s.get("kind"), "frames": s.get("frames"),
                        "fps": _fmt(s.get("fps"), 4), "sha256": str(s.get("sha256", ""))[:16],
                        "error": s.get("error")})
    return {
        "model": model.get("name"),
        "model_class": model.get("class"),
        "weights": model.get("weights_sha256"),
        "units": model.get("output_units") or "output units",
        "frames": n,
        "used": int(use.sum()),
        "not_read": int((~np.asarray(g["frames/ok"][:], dtype=bool) & np.repeat(done, chunk)[:n]).sum()),
        "sources": sources,
        "methods": ", ".join(names),
        "device": spec.get("device"),
        "created": attrs.get("created"),
        "completed": attrs.get("completed") or "–",
        "seconds": _fmt(total_s, 4),
        "ms_per_frame": _fmt(1e3 * total_s / frames_timed, 3) if frames_timed else "–",
        "steps": (spec.get("metrics") or {}).get("steps"),
        "baseline": (spec.get("metrics") or {}).get("baseline"),
    }


def _prediction_section(plt, prediction, truth, time_s, source, sources, use, units, steering) -> dict:
    r2, rmse, k = fm.fit_r2(prediction, truth)
    scale = math.degrees(1.0) if steering else 1.0
    shown = "degrees" if steering else units
    # a continuous time axis over sources laid end to end
    offsets = np.zeros(max(len(sources), int(source.max()) + 1 if source.size else 1))
    acc = 0.0
    for i in range(offsets.size):
        offsets[i] = acc
        s = sources[i] if i < len(sources) else {}
        frames, fps = s.get("frames") or 0, s.get("fps") or 25.0
        acc += frames / fps if fps else 0.0
    t = np.where(np.isfinite(time_s), time_s, 0.0) + offsets[source]
    fig, ax = plt.subplots(figsize=(10, 3))
    p = np.where(use, prediction, np.nan) * scale
    if np.isfinite(truth).any():
        ax.plot(t, truth * scale, color="#444444", lw=0.8, label="recorded")
    ax.plot(t, p, color="#d6604d", lw=0.8, label="predicted")
    ax.axhline(0.0, color="#bbbbbb", lw=0.5)
    ax.set_xlabel("time (s, sources end to end)")
    ax.set_ylabel(f"output ({shown})")
    ax.legend(loc="upper right", frameon=False, ncol=2)
    ax.margins(x=0)
    over_time = _figure_png(fig)
    hist = None
    known = np.isfinite(prediction) & np.isfinite(truth)
    if known.sum() >= 2:
        err = (prediction[known] - truth[known]) * scale
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(err, bins=min(60, max(10, int(np.sqrt(err.size)))), color="#4393c3")
        ax.axvline(0.0, color="#444444", lw=0.8)
        ax.set_xlabel(f"prediction − recorded ({shown})")
        ax.set_ylabel("frames")
        hist = _figure_png(fig)
    mean_err = float(np.mean((prediction[known] - truth[known]))) if known.any() else float("nan")
    return {
        "r2": _fmt(r2, 3), "rmse": _out(rmse, steering), "frames": k,
        "bias": _out(mean_err, steering),
        "over_time": over_time, "histogram": hist, "units": shown,
    }


def _strategies(names, analysis_idx, kept, error, pictures, pics, signed, seed, steering) -> list[dict]:
    """SpRAy per method over the analysis sample's maps. Maps that are zero everywhere (Grad-CAM's
    after its ReLU, on some frames) show no strategy and would sit near the centre of any diffuse
    cluster, so they are counted apart and left out."""
    from .strategies import spray

    plt = _pyplot()
    out = []
    for m in names:
        rows = np.array([i for i in analysis_idx if np.any(kept[m][i])], dtype=np.int64)
        entry = {"method": m, "zero": int(analysis_idx.size - rows.size), "maps": int(rows.size), "clusters": [],
                 "k": 0, "eigen": None, "eigenvalues": "", "at_cap": False}
        out.append(entry)
        if rows.size < 3:
            continue
        max_clusters = 8
        result = spray(np.stack([kept[m][i] for i in rows]), seed=seed, max_clusters=max_clusters)
        fig, ax = plt.subplots(figsize=(4, 2.6))
        ev = result.eigenvalues
        ax.plot(np.arange(1, ev.size + 1), ev, "o-", color="#4393c3", ms=4)
        ax.axvline(result.clusters + 0.5, color="#d6604d", lw=0.8, ls="--")
        ax.set_xlabel("eigenvalue number")
        ax.set_ylabel("normalised Laplacian")
        ax.set_title(f"largest gap after {result.clusters}", fontsize=9)
        entry.update(k=result.clusters, eigen=_figure_png(fig), eigenvalues=", ".join(f"{v:.3f}" for v in ev),
                     at_cap=result.clusters == min(max_clusters, rows.size - 1))
        order = np.argsort(-np.bincount(result.labels, minlength=result.clusters), kind="stable")
        for c in order:
            members = np.flatnonzero(result.labels == c)
            frames = rows[members]
            mean_map = unit_max(np.stack([kept[m][i] for i in frames])).mean(0)
            examples = rows[_closest(result.features, members, EXAMPLES)]
            entry["clusters"].append({
                "size": int(members.size),
                "share": f"{100 * members.size / rows.size:.0f}%",
                "error": _out(_mean_abs(error[frames]), steering),
                "mean": pics.overlay(pictures.get(int(examples[0])), mean_map, False),
                "examples": [pics.overlay(pictures.get(int(i)), kept[m][i], signed[m]) for i in examples],
                "example_frames": [int(i) for i in examples],
            })
    return out


def _scenes(kind, groups, names, analysis_idx, views, kept, error, pictures, pics, seed, steering):
    from . import scenes as sc

    have = np.array([i for i in analysis_idx if int(i) in views], dtype=np.int64)
    if have.size < 4:
        return None, (f"scene groups need the frames themselves; only {have.size} of the analysis sample could be "
                      "read again from the sources")
    frames = np.stack([views[int(i)] for i in have])
    vectors, vocabulary = sc.scene_vectors(frames, kind=kind, seed=seed)
    if groups is None:
        k, scores = sc.choose_groups(vectors, seed=seed)
    else:
        k, scores = min(int(groups), have.size), {}
    labels = sc.scene_groups(vectors, k, seed=seed)
    out = []
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    for c in order:
        members = np.flatnonzero(labels == c)
        frames_c = have[members]
        examples = have[_closest(vectors, members, EXAMPLES)]
        out.append({
            "size": int(members.size),
            "share": f"{100 * members.size / have.size:.0f}%",
            "error": _out(_mean_abs(error[frames_c]), steering),
            "examples": [pics.plain(pictures.get(int(i))) for i in examples],
            "maps": [{"method": m, "src": pics.overlay(pictures.get(int(examples[0])),
                                                        unit_max(np.stack([kept[m][i] for i in frames_c])).mean(0),
                                                        False)} for m in names],
        })
    return {
        "kind": "Fisher vectors" if kind == "fisher" else "bags of visual words",
        "groups": out, "k": k, "frames": int(have.size), "vocabulary": vocabulary.size,
        "silhouette": ", ".join(f"{kk}: {v:.3f}" for kk, v in scores.items()),
        "chosen": "given" if groups is not None else "best silhouette",
        "at_cap": groups is None and bool(scores) and k == max(scores),
    }, None


def _faithfulness(plt, g, names, use, units) -> dict:
    rows = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    curves_random = None
    for m in names:
        d = np.asarray(g[f"metrics/{m}/deletion_auc"][:], dtype=np.float64)
        ins = np.asarray(g[f"metrics/{m}/insertion_auc"][:], dtype=np.float64)
        rd = np.asarray(g[f"metrics/{m}/random_deletion_auc"][:], dtype=np.float64)
        ri = np.asarray(g[f"metrics/{m}/random_insertion_auc"][:], dtype=np.float64)
        valid = use & np.isfinite(d) & np.isfinite(ins) & np.isfinite(rd) & np.isfinite(ri)
        if not valid.any():
            rows.append({"method": m, "deletion": "–", "random_deletion": "–", "insertion": "–",
                         "random_insertion": "–", "beats_deletion": "–", "beats_insertion": "–"})
            continue
        rows.append({
            "method": m,
            "deletion": _fmt(d[valid].mean(), 3), "random_deletion": _fmt(rd[valid].mean(), 3),
            "insertion": _fmt(ins[valid].mean(), 3), "random_insertion": _fmt(ri[valid].mean(), 3),
            "beats_deletion": f"{100 * np.mean(d[valid] > rd[valid]):.0f}%",
            "beats_insertion": f"{100 * np.mean(ins[valid] < ri[valid]):.0f}%",
        })
        sel = np.flatnonzero(valid)
        dc = _mean_rows(g[f"metrics/{m}/deletion_curve"], sel)
        ic = _mean_rows(g[f"metrics/{m}/insertion_curve"], sel)
        x = np.linspace(0, 1, dc.size)
        axes[0].plot(x, dc, lw=1.2, label=m)
        axes[1].plot(x, ic, lw=1.2, label=m)
        if curves_random is None:
            curves_random = (_mean_rows(g["metrics/random/deletion_curve"], sel),
                             _mean_rows(g["metrics/random/insertion_curve"], sel))
    if curves_random is not None:
        x = np.linspace(0, 1, curves_random[0].size)
        axes[0].plot(x, curves_random[0], "k--", lw=1, label="random order")
        axes[1].plot(x, curves_random[1], "k--", lw=1, label="random order")
    axes[0].set_title("deletion (higher is more faithful)", fontsize=10)
    axes[1].set_title("insertion (lower is more faithful)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("fraction of pixels deleted / restored")
        ax.set_ylabel(f"|output change| ({units})")
    axes[1].legend(frameon=False, fontsize=8)
    return {"rows": rows, "curves": _figure_png(fig), "units": units}


def _mean_rows(array, rows: np.ndarray) -> np.ndarray:
    """Mean over ``rows`` of a ``(N, S)`` store array (small: read at once, which lets Zarr read
    its chunks concurrently)."""
    return np.asarray(array[:], dtype=np.float64)[rows].mean(0)


def _sanity_rows(attrs, names) -> list[dict]:
    methods = (attrs.get("sanity") or {}).get("methods") or {}
    rows = []
    for m in names:
        s = methods.get(m)
        if not s:
            rows.append({"method": m, "rho": "–", "signed": "–", "compared": "–", "verdict": "not run"})
            continue
        verdict = "n/a" if s.get("passed") is None else ("pass" if s["passed"] else "FAIL")
        rows.append({"method": m, "rho": _fmt(s.get("rank_correlation"), 2),
                     "signed": _fmt(s.get("rank_correlation_signed"), 2), "compared": s.get("compared", "–"),
                     "verdict": verdict})
    return rows


def _share(part: float, total: float) -> str:
    if not total > 0 or not math.isfinite(part):
        return "–"
    p = 100.0 * part / total
    return f"{p:.0f}%" if p >= 10 else f"{p:.1f}%"


def _cost(g, names) -> dict:
    seconds, frames = chunk_seconds(g)
    rows = []
    total = float(seconds.sum()) if len(seconds) else 0.0
    for i, m in enumerate([*names, "metrics (deletion/insertion)"]):
        s = float(seconds[:, i].sum()) if len(seconds) else float("nan")
        rows.append({"what": m, "ms": _fmt(1e3 * s / frames, 3) if frames else "–",
                     "share": _share(s, total),
                     "seconds": _fmt(s, 4)})
    return {"rows": rows, "frames": int(frames)}
