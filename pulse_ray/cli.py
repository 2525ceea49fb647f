"""``pulse-ray`` command line (typer).

Exit codes: 0 the job ran (even with failed rows); 2 bad usage or an unusable
manifest (nothing written); 1 an infrastructure failure; 130 interrupted by Ctrl-C,
143 by SIGTERM (re-run the same command to resume).
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from typer.core import TyperCommand
from typing_extensions import Annotated

from pulse_ray.cli_options import field_subset, with_options
from pulse_ray.job.options import JobOptions, job_fields
from pulse_ray.photos.align import DEFAULT_DETECTOR, DEFAULT_UPSAMPLE
from pulse_ray.search.options import OptionError, SearchOptions
from pulse_ray.search.options import cli_fields as search_cli_fields

app = typer.Typer(
    name="pulse-ray",
    help="PULSE face super-resolution (latent search in a frozen StyleGAN) as a batch job on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


def _fail_usage(msg: str) -> None:
    _err(msg)
    raise typer.Exit(2)


def _fail_infra(what: str, exc: BaseException, output: str | None = None) -> None:
    """An infrastructure failure: one line (what, where, what to do), the traceback in a log file
    (``OUT/logs/`` for a local OUT folder, else the temp folder); exit 1."""
    import os
    import tempfile
    import traceback
    from datetime import datetime, timezone

    from pulse_ray.io import storage

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = tempfile.gettempdir()
    try:
        if output and not storage.is_s3(output) and os.path.isdir(storage.local_path(output)):
            folder = os.path.join(storage.local_path(output), "logs")
            os.makedirs(folder, exist_ok=True)
    except (OSError, ValueError):
        folder = tempfile.gettempdir()
    log = os.path.join(folder, f"pulse-ray-error-{stamp}-{os.getpid()}.log")
    try:
        with open(log, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
        where = f"; details in {log}"
    except OSError:
        where = ""
    cause = _root_cause(exc)
    first = (str(cause).strip().splitlines() or [""])[0][:300]  # a Ray error's text holds a whole traceback
    _err(f"{what}: {type(cause).__name__}: {first}{where} (check the storage / cluster, then re-run)")
    raise typer.Exit(1)


def _root_cause(exc: BaseException) -> BaseException:
    """The error under Ray's wrappers (a task's ``RayTaskError`` -> ``UserCodeException`` -> the
    step's own ``OSError``, say): what the one line names."""
    seen = set()
    while type(exc).__module__.split(".")[0] == "ray" and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)
        inner = inner if isinstance(inner, BaseException) else exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc


def _run_tool(s3_endpoint_url, fn, *args, **kwargs):
    """Run a file tool: bad input is exit 2, anything else exit 1."""
    from pulse_ray.io.storage import Storage

    try:
        return fn(*args, store=Storage(s3_endpoint_url), **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    except Exception as exc:
        _err(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1)


def _report(done: str, skipped: list, err: bool = False) -> None:
    """One line of what was written (on stderr with ``err``), then up to 20 skipped inputs with their reasons."""
    typer.echo(done + (f"; skipped {len(skipped)}" if skipped else ""), err=err)
    for uri, why in skipped[:20]:
        typer.echo(f"  skipped {uri}: {why}", err=True)
    if len(skipped) > 20:
        typer.echo(f"  ... and {len(skipped) - 20} more", err=True)


PHOTOS_SCALE_HELP = "How many times the photos are enlarged (Lanczos) before the SR faces go in."


def _paste_back(output: str, photos_scale: int, overwrite: bool, s3_endpoint_url: str | None,
                err: bool = False) -> None:
    """``paste-back`` (also ``submit --paste-back``): restore the photos of the job in ``output``;
    the report on stderr with ``err`` (after ``submit --json``, whose stdout is the JSON)."""
    from pulse_ray.photos.paste import paste_back as run

    res = _run_tool(s3_endpoint_url, run, output, photos_scale, overwrite=overwrite)
    _report(f"restored {res.written} photo(s) into {output}/restored"
            + (f"; {res.skipped} already restored" if res.skipped else ""), res.failed, err)


def _options(opts: dict) -> JobOptions:
    """The command line's values as options; a bad value is exit 2."""
    try:
        return JobOptions(search=SearchOptions(**opts.get("search", {})), **opts.get("job", {}))
    except OptionError as exc:
        _fail_usage(str(exc))


# ----------------------------------------------------------------------------- submit


@app.command()
@with_options(job=(JobOptions, job_fields(cli_only=True)), search=(SearchOptions, search_cli_fields()))
def submit(
    manifest: Annotated[str, typer.Argument(help="Parquet file, folder or s3:// prefix of Parquet files (columns: id + uri and/or image).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder or s3:// prefix.")],
    json_summary: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    then_paste_back: Annotated[bool, typer.Option("--paste-back", help="Then run paste-back on OUT (a manifest from make-manifest --align ffhq).")] = False,
    photos_scale: Annotated[int, typer.Option(help="With --paste-back: " + PHOTOS_SCALE_HELP)] = 2,
    opts: dict = None,
):
    """Run the batch job: a manifest of LR images in; OUT/sr/<id>.png and OUT/metadata/ out
    (with --paste-back also OUT/restored/)."""
    from pulse_ray.job.submit import ManifestError, ResourcesUnavailable, Terminated, UsageError, format_summary
    from pulse_ray.job.submit import submit as run_submit

    options = _options({"job": {**opts["job"], "progress": not quiet}, "search": opts["search"]})
    try:
        summary = run_submit(manifest, output, options)
    except (ManifestError, UsageError) as exc:
        _fail_usage(str(exc))
    except KeyboardInterrupt as exc:
        _err(f"interrupted{' (SIGTERM)' if isinstance(exc, Terminated) else ''}; finished rows are saved in "
             "OUT/metadata: re-run the same command to resume")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130)
    except ResourcesUnavailable as exc:  # infrastructure: the autoscaler did not add the GPUs
        _err(str(exc))
        raise typer.Exit(1)
    except Exception as exc:  # infrastructure: Ray, storage, ...
        _fail_infra("job failed", exc, output)
    if json_summary:
        typer.echo(json.dumps(summary.to_dict(), default=str))
    else:
        typer.echo(format_summary(summary))
    if then_paste_back and not options.dry_run:
        _paste_back(output, photos_scale, options.overwrite, options.s3_endpoint_url, err=json_summary)


# ----------------------------------------------------------------------------- status


@app.command()
def status(
    output: Annotated[str, typer.Argument(help="The job's output folder or s3:// prefix.")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint.")] = None,
):
    """Counts by status, converged share, error reasons and timing percentiles of OUT."""
    from pulse_ray.io.storage import Storage
    from pulse_ray.job.options import UsageError
    from pulse_ray.job.status import format_status, job_status

    try:
        s = job_status(output, Storage(s3_endpoint_url))
    except (FileNotFoundError, UsageError) as exc:  # no such OUT, an unsupported scheme
        _fail_usage(str(exc))
    except Exception as exc:
        _fail_infra(f"cannot read the metadata of {output}", exc, output)
    typer.echo(json.dumps(s, default=str) if json_out else format_status(s))
    if s["corrupt_parts"]:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- make-manifest


class _MakeManifestCommand(TyperCommand):
    """Reads the old boolean ``--align`` (no value) as ``--align haar``, with a deprecation note."""

    def parse_args(self, ctx, args):
        args = [a for a in args if a != "--no-align"]
        for i, a in enumerate(args):
            if a == "--align" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                typer.echo("note: a bare --align is deprecated: say --align haar (this, a square crop) or "
                           "--align ffhq (landmark alignment of every face)", err=True)
                args.insert(i + 1, "haar")
                break
        return super().parse_args(ctx, args)


@app.command("make-manifest", cls=_MakeManifestCommand)
def make_manifest(
    src: Annotated[str, typer.Argument(help="Folder or s3:// prefix of images; with --align ffhq also a Parquet table of photos (id + uri and/or image, optional landmarks / box).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Manifest to write (.parquet, local or s3://).")],
    align: Annotated[Optional[str], typer.Option(help="'ffhq': every face of each photo, FFHQ-aligned from dlib's 68 landmarks (needs the align extra); 'haar': the largest face, square crop (OpenCV cascade).")] = None,
    lr_size: Annotated[Optional[int], typer.Option(help="With --align: LR side in px (default 16).")] = None,
    align_scale: Annotated[Optional[float], typer.Option(help="With --align ffhq: crop scale (1.0 = FFHQ framing); default: the one --generator records, else 1.0.")] = None,
    generator: Annotated[Optional[str], typer.Option(help="With --align ffhq: the generator whose recorded alignment sets the crop scale (default: bundled).")] = None,
    detector: Annotated[str, typer.Option(help="With --align ffhq: face detector, hog, cnn or haar.")] = DEFAULT_DETECTOR,
    upsample: Annotated[int, typer.Option(help="With --align ffhq: times the photo is doubled for detection (small faces).")] = DEFAULT_UPSAMPLE,
    num_cpus: Annotated[Optional[int], typer.Option(help="With --align ffhq: CPUs of the embedded Ray (default: all).")] = None,
    address: Annotated[Optional[str], typer.Option(help="With --align ffhq: align on this Ray cluster ('auto', ray://...) instead of an embedded Ray.")] = None,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint.")] = None,
):
    """Images -> manifest (id, uri); with --align haar (id, image, source_uri); with --align ffhq one
    row per face (id '<photo>#<k>', image, source_uri, quad, landmarks, score), failures in <manifest>.failed.parquet."""
    from pulse_ray.tools import make_manifest as run

    ffhq = dict(scale=align_scale, generator=generator, detector=detector, upsample=upsample, num_cpus=num_cpus,
                address=address) if align == "ffhq" else None
    res = _run_tool(s3_endpoint_url, run, src, output, align=align, lr_size=lr_size, ffhq=ffhq)
    _report(f"wrote {output}: {res.written} {'faces' if align == 'ffhq' else 'rows'}", res.skipped)


# ----------------------------------------------------------------------------- downscale


@app.command()
def downscale(
    src: Annotated[str, typer.Argument(help="Folder / s3:// prefix (or one file) of HR images.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder / s3:// prefix for the LR PNGs.")],
    factor: Annotated[int, typer.Option(help="Downscale factor (sides must be divisible by it).")] = 4,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint.")] = None,
):
    """HR images -> LR images with the degradation the search inverts."""
    from pulse_ray.tools import downscale_images

    res = _run_tool(s3_endpoint_url, downscale_images, src, output, factor)
    _report(f"wrote {res.written} LR image(s) to {output}", res.skipped)


# ----------------------------------------------------------------------------- upsample


@app.command()
@with_options(job=(JobOptions, field_subset(JobOptions, ["generator", "batch_size"])),
              search=(SearchOptions, [f for f in search_cli_fields() if f.name != "save_restarts"]))
def upsample(
    inputs: Annotated[List[str], typer.Argument(help="LR image files and/or folders of them.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for <stem>.png and metadata.parquet.")],
    opts: dict = None,
):
    """Super-resolve images in this process (no Ray); prints each image's downscale MSE."""
    from pulse_ray.job.in_process import upsample_files
    from pulse_ray.job.search_step import SearchStep

    options = _options(opts)

    def show(row):
        if row["status"] == "ok":
            typer.echo(f"{row['id']}: downscale_mse={row['downscale_mse']:.3e} converged={'yes' if row['converged'] else 'no'} -> {row['sr_uri']}")
        else:
            typer.echo(f"{row['id']}: FAILED {row['error']}")

    try:
        res = upsample_files(inputs, output, SearchStep(options.search, options.generator),
                             batch_size=options.batch_size or 4, on_row=show)
    except (ValueError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130)
    except Exception as exc:
        _err(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1)
    st = res.table.column("status").to_pylist()
    conv = res.table.column("converged").to_pylist()
    ok = sum(s == "ok" for s in st)
    nconv = sum(1 for s, c in zip(st, conv) if s == "ok" and c)
    typer.echo(f"{ok}/{len(st)} ok, {nconv} converged, {res.seconds:.1f}s; metadata: {output}/metadata.parquet")


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context):
    """Train (or resume training) a face generator on your own photos; `pulse-ray train --help`
    lists the options (data source, run folder, minutes, export)."""
    from pulse_ray.train.loop import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


@app.command(
    "nightly",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def nightly(ctx: typer.Context):
    """Run submit on every new manifest under INPUT_PREFIX into OUTPUT_ROOT/<key>, with a ledger
    (idempotent, resumes runs that died). `pulse-ray nightly --help` lists the options."""
    from pulse_ray.job.nightly import main as nightly_main

    raise typer.Exit(nightly_main(list(ctx.args), prog="pulse-ray nightly"))


@app.command("convert")
def convert_generator(
    src: Annotated[str, typer.Argument(help="StyleGAN2 file: NVIDIA .pkl or rosinality .pt (path, file:// or s3://).")],
    out: Annotated[str, typer.Argument(help="The pulse-ray bundle to write (.pt).")],
    half: Annotated[bool, typer.Option(help="Store the weights as fp16 (half the size; loaded as fp32).")] = False,
    fit_samples: Annotated[int, typer.Option(help="Latents for the gaussian fit of the mapping network.")] = 1_000_000,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint.")] = None,
):
    """A StyleGAN2 file -> a pulse-ray bundle (weights only, gaussian fit included) that every worker
    loads fast; its code, if any, is never run."""
    from pulse_ray.io import storage
    from pulse_ray.models.checkpoint import CheckpointError
    from pulse_ray.models.stylegan2_files import convert

    try:
        res = convert(src, out, half=half, fit_samples=fit_samples, store=storage.Storage(s3_endpoint_url))
    except (CheckpointError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote {out}: StyleGAN2 {res['resolution']} px, {res['num_ws']} latent layers, "
               f"from {res['source']} ({res['bytes'] / 1e6:.1f} MB)")


# ----------------------------------------------------------------------------- report


@app.command("report")
def report(
    outputs: Annotated[List[str], typer.Argument(help="The job's output folder or s3:// prefix; two to compare them side by side.")],
    to: Annotated[Optional[str], typer.Option("--to", help="Folder or s3:// prefix for the report (default: OUT/report).")] = None,
    open_it: Annotated[bool, typer.Option("--open", help="Open the report in a web browser when it is written.")] = False,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint.")] = None,
):
    """Write a static HTML report of OUT: summary, plots and a gallery of every input (re-run to refresh)."""
    from pulse_ray.report import build_report

    if len(outputs) > 2:
        _fail_usage(f"report takes one output, or two to compare (got {len(outputs)})")
    res = _run_tool(s3_endpoint_url, build_report, outputs, to)
    typer.echo(f"wrote the report of {res.rows} rows to {res.destination} ({res.thumbs_made} thumbnails made, "
               f"{res.thumbs_reused} reused, {res.seconds:.1f}s); open {res.index}")
    if open_it:
        if res.index.startswith("s3://"):
            _err("--open: the report is on S3; serve the bucket as a static website to open it")
        else:
            import webbrowser

            webbrowser.open(res.index)

# ----------------------------------------------------------------------------- paste-back


@app.command("paste-back")
def paste_back(
    output: Annotated[str, typer.Argument(help="The job's output folder or s3:// prefix (submitted with a manifest from make-manifest --align ffhq).")],
    photos_scale: Annotated[int, typer.Option(help=PHOTOS_SCALE_HELP)] = 2,
    overwrite: Annotated[bool, typer.Option(help="Restore photos again even where OUT/restored already has them.")] = False,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint.")] = None,
):
    """SR faces back into their photos: OUT/restored/<photo id>.png|jpg, listed in OUT/restored_metadata/."""
    _paste_back(output, photos_scale, overwrite, s3_endpoint_url)


def main() -> None:  # python -m pulse_ray.cli
    app()


if __name__ == "__main__":
    main()
