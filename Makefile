# Two commands set everything up on a fresh machine with only Python and pip:
#   make tour   -> virtual environment, CPU torch, .[all], then `sciffusion tour`
#   make test   -> the same with .[all,dev], then the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: tour test venv venv-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch first: any other torch requirement pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet $(TORCH)

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[all]"

venv-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"

tour: venv
	$(BIN)/sciffusion tour --out tour-output

test: venv-dev
	$(BIN)/python -m pytest -q

# The peers the benchmarks compare against (diffusers; torchcfm without its dependency chain,
# torchdyn -> torchvision, which would replace the CPU torch with a CUDA build).
bench: venv-dev
	$(BIN)/python -m pip install --quiet -e ".[all,dev,bench]"
	$(BIN)/python -m pip install --quiet --no-deps torchcfm

clean:
	rm -rf $(VENV) build dist *.egg-info tour-output
