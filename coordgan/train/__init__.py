"""Training CoordGAN and its encoder: losses, data, resumable runs, torchrun scale-out.

`coordgan train` / `coordgan train-encoder` (coordgan/cli/train.py) are the entry points;
`torchrun ... -m coordgan.cli train ...` runs them in several processes.
"""
