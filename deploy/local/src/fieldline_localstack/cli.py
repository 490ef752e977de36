"""`fieldline stack`: start, inspect and stop the local stack from a shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fieldline_localstack._process import ServiceError
from fieldline_localstack.stack import SECURE_SITE, LocalStack

app = typer.Typer(
    help="Local Mosquitto + InfluxDB on loopback for development.",
    no_args_is_help=True,
    add_completion=False,
)
_out = Console()
_err = Console(stderr=True)

DirOption = Annotated[
    Path,
    typer.Option("--dir", "-d", help="Folder holding the stack's state and stack.json."),
]


def _fail(message: str) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@app.command()
def start(
    state_dir: DirOption = Path(".fieldline-stack"),
    victoriametrics: Annotated[
        bool, typer.Option(help="Also start VictoriaMetrics (an InfluxDB v2 write target).")
    ] = False,
    secure: Annotated[
        bool,
        typer.Option(
            help="TLS only (no plaintext listener), per-device users bound to their client "
            "ids, ACLs on the broker; InfluxDB with auth and a write-only pipeline user. "
            "Passwords go to files (pipeline.env, sim.env), never to the terminal."
        ),
    ] = False,
) -> None:
    """Start the stack in the background and print its URLs and env vars."""
    try:
        stack = LocalStack(state_dir, victoriametrics=victoriametrics, secure=secure)
        stack.start()
    except (ServiceError, OSError) as exc:
        raise _fail(str(exc)) from None
    stack.detach()
    _out.print(f"[green]stack started[/] in {stack.state_dir}", highlight=False)
    for name, service in stack.services.items():
        _out.print(f"  {name:<16} {service.url}  (pid {service.pid})")
    if stack.mosquitto.tls_port is not None:
        _out.print(f"  {'devices (TLS)':<16} {stack.mosquitto.tls_url}")
    if stack.env_file is not None and stack.sim_env_file is not None:
        # Each file in a subshell of its own: a variable exported for one tool
        # would otherwise reach every later command of the user's shell.
        _out.print("\nrun each tool with its own settings (the files hold secrets):")
        print(f"(set -a; . {stack.env_file}; set +a; exec fieldline pipeline run)")
        sim = f"exec fieldline sim run --site {SECURE_SITE}"
        print(f"(set -a; . {stack.sim_env_file}; set +a; {sim})")
    else:
        _out.print("\nexport these to point Fieldline at it:")
        for key, value in stack.env().items():
            # Plain print: the lines must stay copy-pasteable (no wrapping or markup).
            print(f"export {key}={value}")
    _out.print(f"\nstop it with: fieldline stack stop --dir {state_dir}", highlight=False)


@app.command()
def stop(state_dir: DirOption = Path(".fieldline-stack")) -> None:
    """Stop the stack started with `start` in the same folder."""
    try:
        LocalStack.from_state(state_dir).stop()
    except (ServiceError, OSError) as exc:
        raise _fail(str(exc)) from None
    _out.print("[green]stack stopped[/]")


@app.command()
def status(state_dir: DirOption = Path(".fieldline-stack")) -> None:
    """Show whether each service runs; exit 1 if any does not."""
    try:
        stack = LocalStack.from_state(state_dir)
    except (ServiceError, OSError) as exc:
        raise _fail(str(exc)) from None
    states = stack.status()
    for name, service in stack.services.items():
        label = "[green]running[/]" if states[name] else "[red]stopped[/]"
        _out.print(f"  {name:<16} {label}  {service.url}  (pid {service.pid})")
    if not all(states.values()):
        raise typer.Exit(1)
