"""`python -m coordgan.cli ...`: the `coordgan` command (how torchrun starts training processes)."""

from coordgan.cli import main

main()
