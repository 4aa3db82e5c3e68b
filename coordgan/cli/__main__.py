"""`python -m coordgan.cli ...`: the `coordgan` command (how torchrun starts training processes)."""

from coordgan.cli import main

if __name__ == "__main__":
    main()
