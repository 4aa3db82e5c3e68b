# `make demo` and `make test` work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned to the releases this machine class keeps on disk (a CUDA build that runs on CPU).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTRITON := nvidia-pytriton==0.7.0

.PHONY: demo test venv clean

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	# tritonserver for `coordgan serve` and the serving tests: only the binary of this wheel is used,
	# so --no-deps keeps its numpy<2 pin (for its own Python API) out of the environment.
	$(PY) -m pip install -q --no-deps '$(PYTRITON)' || echo "no nvidia-pytriton wheel here: Triton tests will skip"
	touch $(PY)

venv: $(PY)

# The main job once a trained checkpoint ships; until then the tiny preset's swap grid.
SHIPPED := checkpoints/tiny-synthetic-faces.safetensors
demo: $(PY)
	@if [ -f $(SHIPPED) ]; then $(VENV)/bin/coordgan demo; \
	else $(VENV)/bin/coordgan sample --preset tiny --out demo-out/sample.png --overwrite; fi

# Training runs in a pytest process of its own: after the propagation tests have compiled many models
# in OpenVINO's CPU plugin in the same process, a later training step there died with SIGSEGV (never
# in isolation, never in a command, which loads one or the other).
test: $(PY)
	$(PY) -m pytest -q --ignore-glob='tests/test_train_*.py' && $(PY) -m pytest -q tests/test_train_*.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
