"""``fieldline nab``: score the pipeline's detectors on the Numenta Anomaly Benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Score anomaly detectors on the Numenta Anomaly Benchmark.")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"fieldline nab: {message}", err=True)
    return typer.Exit(2)


@app.callback()
def _group() -> None:
    """Score anomaly detectors on the Numenta Anomaly Benchmark (NAB v1.1 rules)."""


@app.command("score")
def score(
    nab_dir: Annotated[
        Path,
        typer.Option(help="NAB directory with data/, labels/combined_windows.json, config/."),
    ],
    detector: Annotated[
        str | None,
        typer.Option(help="Detector name [default: the one the pipeline runs by default]."),
    ] = None,
    results_dir: Annotated[
        Path | None,
        typer.Option(help="Also write per-row scores here (OUT/<category>/<detector>_<file>.csv)."),
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Processes to spread the files over.")] = min(
        2, os.cpu_count() or 1
    ),
    quiet: Annotated[bool, typer.Option(help="No progress on stderr.")] = False,
) -> None:
    """Run the detector over every NAB file as a stream; print the scores as JSON."""
    from fieldline_pipeline.detectors import DEFAULT_DETECTOR, detector_class
    from fieldline_pipeline.nab.loader import NABError
    from fieldline_pipeline.nab.runner import score_corpus

    name = detector or DEFAULT_DETECTOR
    try:
        detector_class(name)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if not nab_dir.is_dir():
        raise _fail(f"--nab-dir {nab_dir} is not a directory")
    try:
        result = score_corpus(nab_dir, name, results_dir, jobs, verbose=not quiet)
    except NABError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(result))
