"""`python -m coordgan.train train ...`: the main CLI with the training commands, for torchrun."""

from coordgan.cli import app, main
from coordgan.train.cli import register

if not any(cmd.name == "train" for cmd in app.registered_commands):  # until the lead wires it in
    register(app)

if __name__ == "__main__":
    main()
