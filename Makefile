# Two entry points (see README): `make demo` runs the main job on embedded defaults,
# `make test` runs the whole suite. Both create .venv first; re-running is a no-op install.
PYTHON ?= python3
VENV := .venv
# Platform pins (CPU torch, torchvision, fastapi); set CONSTRAINTS= on a GPU machine.
CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed
OUT ?= ./outputs

.PHONY: venv demo test gpu-wheels clean

# uv installs the stack in ~90 s where pip takes ~200 s. It ignores pip's configuration, so the
# sources pip is configured with (this platform's CPU torch folder) are handed to it; pip installs
# where uv cannot be had. Bytecode is compiled at install, as pip does: these machines set
# PYTHONDONTWRITEBYTECODE, and without .pyc files every process compiled its imports (2.5x slower
# start-up, a 926 s suite instead of ~680 s).
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	($(VENV)/bin/pip install --quiet uv && $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python \
	    $$($(VENV)/bin/pip config list | $(VENV)/bin/python constraints/pip_sources.py) \
	    $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]') \
	|| ($(VENV)/bin/pip install --quiet --upgrade pip \
	    && $(VENV)/bin/pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]')
	$(VENV)/bin/python -m vstar_model.tar.cpu_kernel  # TAR's CPU kernel compiled now, not in the first run (~30 s)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vstar produce catalogs/demo.yaml --out $(OUT) --fallback-metric pixel_cosine

# Two workers, one per core (each test file stays on one worker, beside its module fixtures), handed
# the files with slow tests first (tests/conftest.py), not most tests first.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# What benchmarks/gpu_figures.sh installs on a lent GPU machine, whose image has no diffusers:
# wheels for its Python 3.12 of the diffusers tested here, carried there in .whl/.
gpu-wheels: $(STAMP)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	    --implementation cp --platform manylinux2014_x86_64 -d .whl \
	    diffusers==$$($(VENV)/bin/python -c "import diffusers; print(diffusers.__version__)") importlib_metadata

clean:
	rm -rf $(VENV) outputs .pytest_cache .whl
