"""The `coordgan` command line: one Typer app, one module per command group.

    model.py      info, sample
    train.py      train, train-encoder
    evaluate.py   eval-propagation, eval-video
    propagate.py  propagate
    demo.py       demo
    export.py     export onnx | verify | trt | lookup
    triton.py     triton build, serve
    bench.py      bench encoder | generator | lookup | pipeline | triton | compare
    report.py     report (an HTML page of a propagation run)
    errors.py     how every command ends (user errors, Ctrl-C, SIGTERM); never imports the app
    common.py     help formatting, progress displays and option parsing the modules share

Each module adds its commands with `register(app)`. Commands parse options, call library code
(runtime/, coordgan/, export/, triton_models/) and print; they import that code inside their
functions, so `coordgan --help` and the runtime commands start without PyTorch. Nothing outside
this package imports it.
"""

from __future__ import annotations

import typer

from coordgan.cli import bench, demo, evaluate, export, model, propagate, report, train, triton
from coordgan.cli.common import conventional_help
from coordgan.cli.errors import run_app

conventional_help()
app = typer.Typer(
    help="CoordGAN from PyTorch training to production inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _group in (model, train, evaluate, propagate, report, demo, export, triton, bench):
    _group.register(app)


def main() -> None:
    run_app(app)
