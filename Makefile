# Reproducible compendium: daratumumab-lenalidomide resistance in multiple myeloma.
#   make all                 set up .venv, build the default cohort, run every notebook, write figures/results
#   make all COHORT=tiny     the same for another cohort (a folder under data/cohorts/)
#   make test                unit tests + an end-to-end run of every notebook on the tiny cohort
#   make lab                 JupyterLab with the project's kernel
#   make clean               remove generated outputs of COHORT (figures/, results/, data/processed/)
#   make snapshot            after make all: validation/<COHORT>/ (scorecard, QC/annotation goals, realism) to commit
#   make bench [SIZES="50000 100000"] [PEER_SIZES=...] [CHAIN_SIZES=...] [BENCH_ARGS=--commit]
#                            benchmarks/results.md: notebook timings, core pipeline and memory against cells (SIZES),
#                            a plain scanpy peer against notebooks 01+02 (PEER_SIZES) and the whole chain 00-10 with
#                            the Dask engine against cells (CHAIN_SIZES; BENCH_ARGS go to benchmarks/chain.py)
#   make bench-peer / make bench-chain  only the peer / only the whole chain (resumable: measured sizes are skipped)
#   make calibrate [CAL_K=20]  validation/calibration.*: verdict rates of K null + K planted small cohorts run
#                            through the chain, against predicted power (not part of all; resumable; long)
SHELL := /bin/bash
.DEFAULT_GOAL := all
.DELETE_ON_ERROR:

COHORT ?= ifm2017_sim
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

# independent notebooks run side by side (03-08 after 02, 09 beside 01); DR_JOBS=1 runs them one at a time
# (two at once measured at ~7 GiB peak on the default cohort)
DR_JOBS ?= 2
MAKEFLAGS += --jobs=$(DR_JOBS) --output-sync=target

export DR_THREADS ?= 2
export OMP_NUM_THREADS := $(DR_THREADS)
export OPENBLAS_NUM_THREADS := $(DR_THREADS)
export MKL_NUM_THREADS := $(DR_THREADS)
export NUMBA_NUM_THREADS := $(DR_THREADS)
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
export DR_ROOT := $(CURDIR)

HELPERS := $(wildcard src/helpers/*.py src/helpers/*/*.py)
SHARED_DATA := $(wildcard data/simulation/*) $(wildcard data/genesets/*) $(wildcard data/*.yaml)
# a cohort whose simulation block says 'base: <cohort>' inherits that cohort's knobs: its cohort.yaml is an input too
BASE_COHORT := $(shell sed -n 's/^ *base: *\([A-Za-z0-9_.-]*\).*/\1/p' data/cohorts/$(COHORT)/cohort.yaml 2>/dev/null)
COHORT_FILES := $(wildcard data/cohorts/$(COHORT)/*) $(if $(BASE_COHORT),$(wildcard data/cohorts/$(BASE_COHORT)/cohort.yaml))
OUT := results/$(COHORT)/notebooks
RUN := $(PY) -m helpers.runner run --cohort $(COHORT) --notebook

# The notebook chain, in order. A notebook re-runs when it, its inputs, the helpers or the cohort changed.
NOTEBOOKS := $(sort $(notdir $(basename $(wildcard notebooks/[0-9][0-9]_*.ipynb))))
TARGETS := $(addprefix $(OUT)/,$(addsuffix .ipynb,$(NOTEBOOKS)))

.PHONY: all setup test test-unit lab clean validate list bench bench-peer bench-chain snapshot
# the longest notebooks first, so that parallel make starts them as soon as their inputs exist
FIRST := $(filter $(OUT)/09_power.ipynb $(OUT)/07_classifier.ipynb,$(TARGETS))
all: $(FIRST) $(TARGETS)
	@echo "done: figures in figures/$(COHORT)/, results in results/$(COHORT)/"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync -q --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name dr-compendium --display-name "DR compendium (.venv)" >/dev/null
	@rm -f $(VENV)/.installed-*
	@touch $@

validate: $(STAMP)
	$(PY) -m helpers.runner validate --cohort $(COHORT)

# after make all: commit what was measured (scorecard, QC/annotation goals, planted shares, realism) to validation/
snapshot: $(STAMP)
	$(PY) -m helpers.validation.snapshot --cohort $(COHORT)

list:
	@printf '%s\n' $(NOTEBOOKS)

# explicit inputs of each notebook (outputs of earlier notebooks it reads)
$(OUT)/01_qc_integration.ipynb: $(OUT)/00_cohort.ipynb
$(OUT)/02_annotation.ipynb: $(OUT)/01_qc_integration.ipynb
$(OUT)/03_inflammation.ipynb $(OUT)/04_monocytes.ipynb $(OUT)/05_nk_cd16.ipynb $(OUT)/06_tumour_nfkb.ipynb: $(OUT)/02_annotation.ipynb
$(OUT)/07_classifier.ipynb $(OUT)/08_resistance_atlas.ipynb: $(OUT)/02_annotation.ipynb
$(OUT)/09_power.ipynb: $(OUT)/00_cohort.ipynb
$(OUT)/10_scorecard.ipynb: $(filter-out $(OUT)/10_scorecard.ipynb,$(TARGETS))

$(OUT)/%.ipynb: notebooks/%.ipynb $(STAMP) $(HELPERS) $(SHARED_DATA) $(COHORT_FILES)
	$(RUN) $<

# wall time and peak memory: every notebook (from the last make all) and the core pipeline at 50k-200k cells, then
# the plain scanpy peer beside notebooks 01+02 and the whole chain against cells (both resumable; long)
PEER_SIZES ?= 50000 100000 200000
CHAIN_SIZES ?= 100000 250000 500000 1000000
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/run.py --keep $(if $(SIZES),--sizes $(SIZES))
	$(PY) benchmarks/memory.py $(if $(SIZES),--sizes $(SIZES))
	$(PY) benchmarks/peer.py --sizes $(PEER_SIZES)
	$(PY) benchmarks/chain.py --sizes $(CHAIN_SIZES) $(BENCH_ARGS)

bench-peer: $(STAMP)
	$(PY) benchmarks/peer.py --sizes $(PEER_SIZES)

bench-chain: $(STAMP)
	$(PY) benchmarks/chain.py --sizes $(CHAIN_SIZES) $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not slow"

# JupyterLab in notebooks/ with the project's kernel (the .venv); --allow-root only when run as root (containers)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --MappingKernelManager.default_kernel_name=dr-compendium \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf results/$(COHORT) figures/$(COHORT) data/processed/$(COHORT)

# Calibration (issue 15; helpers.validation.calibration): CAL_K null and CAL_K planted cohorts of a small design (CAL_BM and
# CAL_PB = CR NR patients in marrow and blood, cells per sample) through notebooks 00-10 but 09, CAL_JOBS cohorts at a
# time with CAL_THREADS threads each, in a scratch project root (.cache/calibration/<design>/); a rerun skips finished
# cohorts. CAL_ARGS passes more options (python -m helpers.validation.calibration --help), e.g. CAL_ARGS="--analysis '{min_cells: 5}'".
# The recipe line starts with + so that --output-sync does not hold back the progress bar; under make -n it only prints.
CAL_K ?= 20
CAL_BM ?= 6 6
CAL_PB ?= 6 6
CAL_BM_CELLS ?= 600
CAL_PB_CELLS ?= 300
CAL_SEED ?= 150000
CAL_JOBS ?= 2
CAL_THREADS ?= 1
CAL_POWER_REPS ?= 500
CAL_ARGS ?=
CALIBRATE = $(PY) -m helpers.validation.calibration --k $(CAL_K) --bm $(CAL_BM) --pb $(CAL_PB) --bm-cells $(CAL_BM_CELLS) \
  --pb-cells $(CAL_PB_CELLS) --seed $(CAL_SEED) --jobs $(CAL_JOBS) --threads $(CAL_THREADS) \
  --power-reps $(CAL_POWER_REPS) $(CAL_ARGS)
.PHONY: calibrate
calibrate: $(STAMP)
	+@$(if $(findstring n,$(firstword -$(MAKEFLAGS))),$(info $(CALIBRATE)),$(CALIBRATE))
