"""``fastviz audit``: the command line of :func:`fastviz.audit.audit`.

``fastviz audit [INPUT ...] -o STORE.zarr``: every frame of the inputs (default: the bundled
held-out drive log) through the methods (default: occlusion, Grad-CAM, VisualBackProp), with
deletion/insertion metrics, into a Zarr v3 store; then the model-randomisation sanity check and
a summary table on stdout. Run the same command again after an interruption (Ctrl-C, SIGTERM,
``kill -9``) to resume: finished chunks are kept and only the rest is computed. A store started
with other inputs, model or options is refused with one line naming the difference, unless
``--overwrite``. Inputs that are corrupt or truncated are skipped with a warning line and recorded
in the store. ``--report report.html`` writes the HTML report once the audit is done.

``fastviz report STORE.zarr -o report.html``: the self-contained HTML report of an audit store
(:mod:`fastviz.audit.report`).
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "add_report_parser", "run", "run_report"]


def add_parser(commands, types) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand to ``commands`` (argparse subparsers); ``types`` is the CLI
    module, whose argument types are shared."""
    from .run import DEFAULT_BATCH, DEFAULT_CHUNK, DEFAULT_METHODS
    from .metrics import DEFAULT_STEPS
    from .sanity import DEFAULT_SAMPLE, DEFAULT_THRESHOLD

    import fastviz

    au = commands.add_parser(
        "audit",
        help="audit a model over drive logs, videos or image folders into a resumable Zarr store",
        description=(
            "Compute, for every frame, each method's raw saliency map, the model's prediction, deletion and insertion "
            "AUCs against a random pixel order (RISE, Petsiuk et al. 2018, adapted to regression) and map "
            "statistics, and write them to a Zarr v3 store chunk by chunk; then run the model-parameter "
            "randomisation sanity check (Adebayo et al. 2018) on a sample and print a summary. INPUT: drive logs "
            "(video + .csv of steering_rad: the recorded steering is the truth), video files, image folders, or "
            ".txt files listing them, one per line; none: the bundled held-out CarRacing log. Run the same "
            "command again to resume an interrupted audit; the store's layout is in the README."
        ),
    )
    au.add_argument("inputs", nargs="*", metavar="INPUT", help="inputs (default: the bundled drive log)")
    au.add_argument("-o", "--output", required=True, metavar="STORE.zarr",
                    help="the store folder to create or resume, or a URL fsspec knows (s3://bucket/a.zarr)")
    au.add_argument("--model", default="pilotnet-carracing", metavar="NAME|PATH",
                    help=f"bundled model ({', '.join(fastviz.models.available())}) or a .safetensors file "
                    "(default: %(default)s)")
    au.add_argument("--methods", type=types._method_list, default=list(DEFAULT_METHODS), metavar="A,B,...",
                    help=f"methods to audit (default: {','.join(DEFAULT_METHODS)}; registered: "
                    f"{', '.join(fastviz.methods())})")
    au.add_argument("--batch", type=types._positive_int, default=DEFAULT_BATCH, metavar="N",
                    help="frames per method call (default: %(default)s)")
    au.add_argument("--chunk", type=types._positive_int, default=DEFAULT_CHUNK, metavar="N",
                    help="frames per store chunk, the unit committed at once (default: %(default)s)")
    au.add_argument("--device", default="cpu", metavar="cpu|cuda", help="torch device (default: %(default)s)")
    au.add_argument("--memory-budget", type=types._memory_budget, metavar="X",
                    help="memory a chunk of forward work may use: 512MiB, 8GiB, bytes or a fraction of free memory; "
                    "fixed in the store when it is created")
    au.add_argument("--max-frames", type=types._positive_int, metavar="N", help="audit the first N frames only")
    au.add_argument("--steps", type=types._positive_int, default=DEFAULT_STEPS, metavar="S",
                    help="points of the deletion/insertion curves minus one (default: %(default)s)")
    au.add_argument("--sanity-frames", type=types._non_negative_int, default=DEFAULT_SAMPLE, metavar="K",
                    help="frames in the randomisation check's sample, 0 to skip it (default: %(default)s)")
    au.add_argument("--sanity-threshold", type=types._unit_float, default=DEFAULT_THRESHOLD, metavar="R",
                    help="a method fails the check when |rank correlation| >= R (default: %(default)s)")
    au.add_argument("--overwrite", action="store_true",
                    help="start again when STORE is an audit store with other settings (or complete)")
    au.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="compute the chunks on Ray workers (pip install 'fastviz[dist]'): on the cluster at ADDRESS "
                    "('auto': the one this machine belongs to), or without ADDRESS on a local Ray started for the "
                    "audit; the store must be on a file system every worker reaches")
    au.add_argument("--workers", type=types._positive_int, metavar="N",
                    help="Ray workers (default: one per GPU of the cluster for --device cuda, else one per CPU)")
    au.add_argument("--report", metavar="FILE.html", help="then write the HTML report of the store (fastviz report)")
    au.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _report_options(au.add_argument_group("report (with --report)"), types)
    au.set_defaults(run=run)
    return au


def _report_options(p: argparse.ArgumentParser, types) -> None:
    from .report import DEFAULT_ANALYSIS, DEFAULT_SAMPLE, DEFAULT_WORST, SCENE_KINDS

    p.add_argument("--worst", type=types._non_negative_int, default=DEFAULT_WORST, metavar="K",
                   help="frames shown with the largest error (default: %(default)s)")
    p.add_argument("--sample", type=types._non_negative_int, default=DEFAULT_SAMPLE, metavar="K",
                   help="frames shown at random (default: %(default)s)")
    p.add_argument("--analysis", type=types._non_negative_int, default=DEFAULT_ANALYSIS, metavar="N",
                   help="most frames sampled for SpRAy and the scene groups (default: %(default)s)")
    p.add_argument("--scenes", choices=SCENE_KINDS, default="fisher",
                   help="scene groups from Fisher vectors, bags of visual words, or none (default: %(default)s)")
    p.add_argument("--scene-groups", type=types._positive_int, metavar="K",
                   help="number of scene groups (default: best silhouette in 2..6)")
    p.add_argument("--no-strategies", action="store_true", help="skip SpRAy")
    p.add_argument("--seed", type=types._non_negative_int, default=0, help="seed of every sample (default: %(default)s)")


def add_report_parser(commands, types) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``commands`` (argparse subparsers)."""
    rp = commands.add_parser(
        "report",
        help="write the self-contained HTML report of an audit store",
        description=(
            "Read an audit store (fastviz audit) and write one self-contained HTML page: summary, prediction against "
            "the recorded steering, mean maps, worst frames and a random sample with overlays, strategies (SpRAy), "
            "scene groups (Fisher vectors), faithfulness, the sanity check and the cost. Pictures are embedded; the "
            "page requests nothing from a network. Frames are read again from the sources the store names."
        ),
    )
    rp.add_argument("store", metavar="STORE.zarr", help="an audit store (a folder or a URL)")
    rp.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    _report_options(rp, types)
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rp.set_defaults(run=run_report)
    return rp


def _write_report(store, output, args) -> None:
    from .report import write_report

    result = write_report(
        store, output, worst=args.worst, sample=args.sample, analysis=args.analysis, scenes=args.scenes,
        scene_groups=args.scene_groups, strategies=not args.no_strategies, seed=args.seed, progress=not args.quiet,
    )
    for note in result.notes:
        print(f"fastviz: note: {note}")
    print(f"fastviz: report of {result.frames} frames ({result.images} pictures, {result.bytes / 1e6:.1f} MB) "
          f"in {result.seconds:.1f} s -> {result.path}")


def run_report(args: argparse.Namespace) -> int:
    """Write the report the arguments describe. Returns 0."""
    _write_report(args.store, args.output, args)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the audit the arguments describe; print the summary. Returns 0."""
    from .report import check_output
    from .run import audit

    if args.report:
        check_output(args.report)  # a bad report name fails now, not after the audit
    result = audit(
        args.output, args.inputs or None, model=args.model, methods=args.methods, batch=args.batch,
        chunk=args.chunk, device=args.device, memory_budget=args.memory_budget, max_frames=args.max_frames,
        steps=args.steps, sanity_frames=args.sanity_frames, sanity_threshold=args.sanity_threshold,
        overwrite=args.overwrite, progress=not args.quiet,
        engine="ray" if args.ray is not None else "local",
        address=None if args.ray in (None, "local") else args.ray, workers=args.workers,
    )
    what = "nothing left to compute" if result.computed == 0 else f"{result.computed} frames computed"
    print(result.summary())
    print(f"fastviz: audit of {result.frames} frames ({what}) in {result.seconds:.1f} s -> {result.path}")
    if args.report:
        _write_report(result.path, args.report, args)
    return 0
