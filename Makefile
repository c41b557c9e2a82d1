# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment if needed and installs everything first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segsr-installed

# torch builds that pip resolves on each architecture (see docs/installation.md).
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PKGS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
endif

DEMO_DATA ?= demo_data

# Offline wheelhouse (docs/gpu.md): every dependency except torch/torchvision, as wheels for
# CPython $(PYVER) on manylinux x86_64. GEO=1 adds the [geo] extra (rasterio); EXTRAS=test adds
# pytest, spandrel and rasterio (what benchmarks/gpu_checks.sh needs); INSTALLED=FILE (`pip list
# --format=freeze` of the target) leaves out what the target already has.
PYVER ?= 3.12
WHEELHOUSE ?= wheelhouse
GEO ?=
EXTRAS ?=
INSTALLED ?=
WHEEL_EXTRAS = $(subst $(eval) ,$(comma),$(strip $(EXTRAS) $(if $(GEO),geo)))
comma := ,

# The lock: every dependency of '.[test,export]' except torch/torchvision, exact versions + hashes,
# one universal file (Linux x86_64/aarch64, CPython >= 3.11), compiled by uv (`make lock`).
LOCK ?= requirements/lock.txt
UV_VERSION ?= 0.13.9
LOCK_TOOLS ?= .lock-tools
LOCK_UV := $(LOCK_TOOLS)/bin/uv
LOCK_UPGRADE ?= --upgrade
LOCK_FLAGS ?=

.PHONY: install demo test bench clean-demo wheelhouse lock

install: $(STAMP)

# From the lock (requirements/lock.txt, every dependency at an exact version with hashes), then torch and
# torchvision at the exact TORCH_PKGS versions (outside the hashed lock: see requirements/torch.in), then this
# package without touching its dependencies. `pip install -e .` outside make stays loose.
$(STAMP): setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --no-deps $(TORCH_PKGS)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Re-resolve the lock from PyPI (today's releases) with uv: `make lock` (LOCK_UPGRADE= keeps the current pins,
# LOCK_UPGRADE="--upgrade-package numpy" moves one package), then `make install test demo` and
# `.ci/run` to check it (docs/installation.md). Inputs: setup.py (extras test, export) + requirements/torch.in + requirements/tools.in.
lock: $(LOCK_UV)
	$(LOCK_UV) pip compile setup.py requirements/torch.in requirements/tools.in --extra test --extra export --universal \
		--python-version 3.11 --fork-strategy fewest --generate-hashes \
		--no-emit-package torch --no-emit-package torchvision --custom-compile-command 'make lock' \
		$(LOCK_UPGRADE) $(LOCK_FLAGS) -o $(LOCK)

$(LOCK_UV):
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install uv==$(UV_VERSION)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) datasets_prep/make_demo_dataset.py --out $(DEMO_DATA)
	$(PY) -m segsr_basicsr.train -opt options/demo/train_SeGSR_HAT_demo_x4.yml
	$(PY) -m segsr_basicsr.test -opt options/demo/test_SeGSR_HAT_demo_x4.yml
	$(PY) datasets_prep/bicubic_baseline.py --hr $(DEMO_DATA)/val/HR --lr $(DEMO_DATA)/val/LR_x4 --scale 4
	$(PY) -m segsr_basicsr.report results/SeGSR_HAT_demo_x4_test --out results/demo_report --figure \
		--curves experiments/SeGSR_HAT_demo_x4
	$(PY) -m segsr_basicsr.infer -opt options/demo/test_SeGSR_HAT_demo_x4.yml \
		--model experiments/SeGSR_HAT_demo_x4/models/net_g_latest.pth \
		--input $(DEMO_DATA)/scene/demo_scene_LR.png --output results/demo_infer --tile 64 --tile-overlap 16 --quality-map
	@echo
	@echo "Demo done. Look at:"
	@echo "  validation images + semantic maps: experiments/SeGSR_HAT_demo_x4/visualization/"
	@echo "  test images + metrics:             results/SeGSR_HAT_demo_x4_test/ (compare with the bicubic line above)"
	@echo "  large-scene inference:             results/demo_infer/"
	@echo "  comparison table (md/csv/tex), figure and training curves: results/demo_report*"

wheelhouse: install
	$(PY) .ci/wheelhouse.py --python-version $(PYVER) --out $(WHEELHOUSE) $(if $(WHEEL_EXTRAS),--extras $(WHEEL_EXTRAS)) \
		$(if $(INSTALLED),--installed $(INSTALLED))

# SeG-SR vs spandrel's HAT (paper config, LR 64, x4, batch 1, 2 threads) + scene tiles/s; see docs/performance.md
bench: install
	$(PY) benchmarks/bench_segsr.py --threads 2 --throughput

clean-demo:
	rm -rf $(DEMO_DATA) experiments/SeGSR_HAT_demo_x4* results/SeGSR_HAT_demo_x4_test* results/demo_infer results/demo_report*
