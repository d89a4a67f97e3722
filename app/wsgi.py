"""The gunicorn target `app.wsgi:app`, and the module `flask --app app.wsgi <command>` loads."""

from __future__ import annotations

from app import cli, create_app
from app.settings import adopted

# Under gunicorn a worker builds its app from the settings its master checked (docs/gateway-file.md,
# Reloading); with none (not forked by our master), create_app reads the file. The flask command gets an app
# that a broken gateway file cannot keep from running check-config and create-key.
app = cli.app_for_flask_command() or create_app(adopted())
