"""Command line: app.py builds the Typer root; one thin ``<cmd>_cmd.py`` per command parses options
and calls the core function the web UI calls too."""
