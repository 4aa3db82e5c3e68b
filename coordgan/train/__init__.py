"""Training CoordGAN and its encoder: losses, data, resumable runs, torchrun scale-out.

`coordgan train` / `coordgan train-encoder` (see `coordgan/train/cli.py`) are the entry points;
`python -m coordgan.train ...` runs the same commands (and works under torchrun).
"""
