"""The hooks a telemon plugin may implement. Every argument is passed by keyword, and a
plugin may accept any subset of them. Hooks register objects; the core then calls those
objects directly (a hook is never called per sample)."""

import pluggy

hookspec = pluggy.HookspecMarker("telemon")
hookimpl = pluggy.HookimplMarker("telemon")


@hookspec
def register_drivers(register):
    """Declare device drivers: call register(telemon.drivers.Driver(...)) for each."""


@hookspec
def register_modules(register):
    """Declare disease modules: call register(telemon.modules.DiseaseModule(...)) for each."""


@hookspec
def register_exporters(register):
    """Declare export targets: call register(telemon.exporters.Exporter(...)) for each."""


@hookspec
def register_commands(cli):
    """Add commands to the `telemon` command line (a click.Group)."""


@hookspec
def prepare_database(db):
    """Create or migrate the plugin's own tables in an opened telemon database (sqlite_utils)."""


@hookspec
def startup(config):
    """An edge or central process has loaded its config and is about to start work."""


@hookspec
def shutdown(config):
    """An edge or central process is stopping; release what startup took."""
