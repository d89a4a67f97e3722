"""Flask CLI commands: `flask --app app.wsgi create-key NAME`."""

from __future__ import annotations

import json
import secrets

import click
from flask import Flask

from app.settings import hash_key


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


def register(app: Flask) -> None:
    """Attach the CLI commands to the app."""
    app.cli.add_command(create_key)
