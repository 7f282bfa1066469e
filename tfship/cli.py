"""The ``tfship`` command line: the root group and its commands, added from one module per area.

Commands build result values; ``tfship.render`` prints them. Heavy imports (tensorflow) happen inside the
commands that need them, so ``tfship --help`` and the client commands start fast.
"""

from __future__ import annotations

import click

from tfship import cli_client, cli_deploy, cli_diagnose, cli_export, cli_inspect, cli_model_server, cli_serving, cli_signing
from tfship.command import State, configure_logging, quiet_tensorflow


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="tfship", prog_name="tfship")
def cli(verbose: int, quiet: bool, debug: bool) -> None:
    """Export Keras models to signed SavedModel, TFLite and ONNX, serve them with TensorFlow Serving,
    and validate that the server answers what the original model computes.

    Exit codes: 0 ok, 1 error, 2 usage, 3 predictions do not match, 4 server not reachable or model
    not available, 5 signature missing or invalid, 6 a rollout rolled back on latency.
    """
    State.debug = debug
    quiet_tensorflow()
    configure_logging(verbose, quiet)


for _module in (cli_export, cli_signing, cli_serving, cli_client, cli_model_server, cli_deploy, cli_diagnose, cli_inspect):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli.main(prog_name="tfship")
