"""Serving on Triton Inference Server: the model repository (`coordgan triton build`, repository.py,
pbtxt.py), its python-backend models (models/), and a real tritonserver to run it (`coordgan serve`,
server.py). See README.md in this folder. Never imports torch."""
