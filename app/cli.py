"""Flask CLI commands: `flask --app app.wsgi create-key NAME`, `flask --app app.wsgi check-config [PATH]`.

They run without a loadable gateway file (app/wsgi.py): none of them may need the gateway's settings.
"""

from __future__ import annotations

import json
import secrets

import click
from flask import Flask
from flask.cli import FlaskGroup

from app.settings import SettingsError, check_start, hash_key, load_settings


def new_key() -> str:
    """Return a fresh gateway key."""
    return "pk-" + secrets.token_urlsafe(32)


@click.command("create-key")
@click.argument("name")
def create_key(name: str) -> None:
    """Create a gateway key and print the lines to paste into the gateway file."""
    key = new_key()
    click.echo(f"# gateway key for {name!r}: give this to the client once; only its hash is stored")
    click.echo(f"# x-portkey-api-key: {key}")
    click.echo("[[keys]]")
    click.echo(f"name = {json.dumps(name)}")
    click.echo(f'sha256 = "{hash_key(key)}"')


@click.command("check-config")
@click.argument("path", required=False)
def check_config(path: str | None) -> None:
    """Check a gateway file as start-up does (default: GATEWAY_CONFIG, else ./gateway.toml); exit 0 or 1."""
    try:
        settings = load_settings(path=path)
        warning = check_start(settings)
    except SettingsError as err:
        click.echo(f"portico: {err}", err=True)  # the line start-up would print
        raise SystemExit(1) from None
    click.echo(f"ok: {settings.source}")
    if warning:
        click.echo(f"warning: {warning}", err=True)


def register(app: Flask) -> None:
    """Attach the CLI commands to the app."""
    from app.keys_cli import keys_group

    app.cli.add_command(create_key)
    app.cli.add_command(check_config)
    app.cli.add_command(keys_group)


def app_for_flask_command() -> Flask | None:
    """Return the app the flask command needs (app/wsgi.py), or None outside the flask command.

    The flask command imports the app within its own group's click context to find or list the app's
    commands: they need no settings, so it gets an app that carries only them, whatever the gateway file
    holds. `flask run` or `flask routes` load the app within their command's context: the whole gateway,
    with a bad gateway file reported in one line.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(ctx.find_root().command, FlaskGroup):
        return None
    if isinstance(ctx.command, FlaskGroup):
        app = Flask("app")
        register(app)
        return app
    from app import create_app

    try:
        return create_app()
    except SettingsError as err:
        raise click.ClickException(f"portico: {err}") from None
