"""``fieldline dashboards``: build the Grafana dashboards."""

from __future__ import annotations

import typer

app = typer.Typer(help="Grafana dashboards for Fieldline, built as code.", no_args_is_help=True)


@app.command("list")
def list_dashboards() -> None:
    """List the dashboards this version provides."""
    from fieldline_dashboards import DASHBOARDS

    for name in DASHBOARDS:
        typer.echo(name)
