"""The ``fieldline`` command.

``fieldline-edge`` owns the command because it is the one distribution installed
everywhere, including on devices. Each other distribution adds its subcommands
through the ``fieldline.commands`` entry-point group (a ``typer.Typer`` or a
plain function), so ``fieldline`` offers exactly what is installed. On a device
without typer, ``fieldline edge ...`` still works through argparse alone.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Optional

from fieldline_edge import __version__

_HELP = "Fieldline: IoT stream processing from edge agents over MQTT to InfluxDB."


def _plugins() -> list[EntryPoint]:
    eps: Any = entry_points()
    if hasattr(eps, "select"):
        return sorted(eps.select(group="fieldline.commands"), key=lambda e: e.name)
    return sorted(eps.get("fieldline.commands", []), key=lambda e: e.name)  # Python 3.9


def edge_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``fieldline-edge`` and of ``fieldline edge``."""
    from fieldline_edge.edge_cli import edge_main as run

    return run(argv)


def _main_without_typer(argv: list[str]) -> int:
    if argv[:1] == ["edge"]:
        return edge_main(argv[1:])
    if argv[:1] in (["--version"],):
        print(f"fieldline {__version__}")
        return 0
    names = ", ".join(["edge"] + [ep.name for ep in _plugins()])
    print(f"usage: fieldline COMMAND ...\n\n{_HELP}\n\ncommands: {names}", file=sys.stderr)
    if argv and argv[0] not in ("-h", "--help"):
        print(f"\nfieldline: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    return 0 if argv else 2


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        import typer
    except ImportError:
        return _main_without_typer(args)

    app = typer.Typer(help=_HELP, no_args_is_help=True, add_completion=False)

    # The edge agent parses its own arguments (argparse: it must run without typer).
    def _edge(ctx: typer.Context) -> None:
        raise typer.Exit(edge_main(list(ctx.args)))

    # typer reads annotations at run time; typer is not a module global here.
    _edge.__annotations__ = {"ctx": typer.Context, "return": None}
    app.command(
        "edge",
        context_settings={
            "allow_extra_args": True,
            "ignore_unknown_options": True,
            "help_option_names": [],
        },
        add_help_option=False,
        help="Run the edge agent on a device (see `fieldline edge --help`).",
    )(_edge)

    for ep in _plugins():
        try:
            obj = ep.load()
        except Exception as exc:  # one broken component must not take the others down
            print(f"fieldline: the {ep.name!r} commands are unavailable: {exc}", file=sys.stderr)
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=ep.name)
        else:
            app.command(ep.name)(obj)

    try:
        app(args=args, prog_name="fieldline", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
