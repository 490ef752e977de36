"""``fieldline dashboards``: build, check and push the Grafana dashboards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Grafana dashboards for Fieldline, built as code.", no_args_is_help=True)

#: Where the generated files are committed (deploy/grafana in the repository).
DEFAULT_OUT = Path("deploy/grafana")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"fieldline dashboards: {message}", err=True)
    return typer.Exit(2)


def _read_secret(path: Path, what: str) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _fail(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    if not secret:
        raise _fail(f"{what} file {str(path)!r} is empty")
    return secret


@app.command("list")
def list_dashboards() -> None:
    """List the dashboards this version provides."""
    from fieldline_dashboards import DASHBOARDS
    from fieldline_dashboards.build import dashboard_json

    for name in DASHBOARDS:
        d = dashboard_json(name)
        typer.echo(f"{name:16} {d['uid']:22} {d['title']}")


@app.command("build")
def build(
    out: Annotated[
        Path, typer.Option(help="Folder for dashboards/ and provisioning/.")
    ] = DEFAULT_OUT,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if OUT is not up to date.")
    ] = False,
) -> None:
    """Write the dashboard JSON and Grafana provisioning files (data sources, alerts)."""
    from fieldline_dashboards.build import stale_files, write

    if check:
        stale = stale_files(out)
        for rel in stale:
            typer.echo(f"stale: {out / rel}", err=True)
        if stale:
            typer.echo("run `fieldline dashboards build` and commit the result", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    try:
        paths = write(out)
    except OSError as exc:
        raise _fail(f"cannot write to {str(out)!r}: {exc.strerror}") from None
    for p in paths:
        typer.echo(str(p))


@app.command("push")
def push(
    url: Annotated[str, typer.Option(help="Grafana base URL, e.g. http://localhost:3000.")],
    token_file: Annotated[
        Path, typer.Option(help="File holding a Grafana service account token (Editor).")
    ],
    folder: Annotated[str, typer.Option(help="Grafana folder (created if missing).")] = (
        "Fieldline"
    ),
) -> None:
    """Upload the dashboards to a running Grafana (POST /api/dashboards/db)."""
    from fieldline_dashboards.build import BUILDERS, dashboard_json
    from fieldline_dashboards.push import GrafanaError
    from fieldline_dashboards.push import push as do_push

    if not url.startswith(("http://", "https://")):
        raise _fail(f"--url {url!r} must start with http:// or https://")
    token = _read_secret(token_file, "token")
    try:
        urls = do_push(url, token, {n: dashboard_json(n) for n in BUILDERS}, folder)
    except GrafanaError as exc:
        typer.echo(f"fieldline dashboards: {exc}", err=True)
        raise typer.Exit(1) from None
    for u in urls:
        typer.echo(u)


@app.command("check")
def check(
    influx_url: Annotated[
        str, typer.Option(envvar="FIELDLINE_INFLUX_URL", help="InfluxDB base URL.")
    ] = "http://127.0.0.1:8086",
    db: Annotated[
        str, typer.Option(help="Database (1.x) or DBRP database name (2.x/3.x).")
    ] = "fieldline",
    token_file: Annotated[
        Path | None, typer.Option(help="InfluxDB 2.x/3.x token file (Authorization: Token).")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            help="InfluxDB 1.x user; the password is read from FIELDLINE_INFLUX_PASSWORD."
        ),
    ] = None,
    last: Annotated[str, typer.Option(help="Time range to query, e.g. 1h or 30m.")] = "1h",
    var: Annotated[
        list[str] | None,
        typer.Option(
            "--var",
            help="NAME=VALUE: a variable's value (e.g. device=dev-0007); by default "
            "every value its query finds, the first for single-value ones.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every query.")] = False,
) -> None:
    """Run every panel's and alert rule's query on an InfluxDB, as Grafana would.

    Exit 1 if any query fails or comes back empty.
    """
    import base64

    from fieldline_dashboards.check import check_all, http_query
    from fieldline_dashboards.templating import TimeRange, duration_ms

    try:
        duration_ms(last)
    except ValueError as exc:
        raise _fail(f"--last: {exc}") from None
    headers: dict[str, str] = {}
    if token_file is not None:
        headers["Authorization"] = "Token " + _read_secret(token_file, "token")
    elif user is not None:
        password = os.environ.get("FIELDLINE_INFLUX_PASSWORD", "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    overrides: dict[str, str] = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not (sep and name and value):
            raise _fail(f"--var {item!r} is not NAME=VALUE")
        overrides[name] = value
    checks = check_all(
        http_query(influx_url, db, headers), TimeRange(last=last), overrides=overrides
    )
    failed = [c for c in checks if not c.ok]
    for c in checks:
        if verbose or not c.ok:
            typer.echo(str(c))
    typer.echo(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)
