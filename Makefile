# Two commands set everything up on a fresh machine with only Python and pip:
#   make tour   -> virtual environment, CPU torch, .[all], then `sciffusion tour`
#   make test   -> the same with .[all,dev], then the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# PyTorch's own CPU wheel index: from PyPI, `pip install torch` on Linux brings the multi-GB CUDA
# build. Where the index cannot be reached (an offline mirror, a wheelhouse in pip's config),
# torch comes from pip's configured sources instead. `make TORCH_INDEX=` skips the index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: tour test venv venv-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch first: any other torch requirement pulls a multi-GB CUDA build.
	@if [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(TORCH_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
		echo "$(TORCH) from $(TORCH_INDEX)"; \
		$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH); \
	else \
		echo "$(TORCH) from pip's configured sources ($(or $(TORCH_INDEX),no index given) not reachable)"; \
		$(BIN)/python -m pip install --quiet $(TORCH); \
	fi

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
