# neonet — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
NEONET      := $(PY) -m neonet
# CPU build here; on a GPU machine set TORCH_SPEC to the CUDA build you want (e.g. torch==2.13.0).
TORCH_SPEC  ?= torch==2.13.0
EXPERIMENTS ?= experiments/demo
RUNS        ?= runs
DEMO_CASES  ?= 72
# demo phantom: tumours of 20-30 mm radius so a small CPU-trained NeoSeg reaches good Dice quickly, and a
# PNI signal (infiltrated nerve length) at twice the default so ~40 training cases per fold can learn it
DEMO_SYNTH  ?= --tumor_radius_mm [20,30] --strength 2
# folds trained at once by `neonet cv --jobs` (each with cores/JOBS threads); the demo trains its 3 folds at once
# with one CPU thread per process: small 3D models gain little from a second thread, and two-thread processes
# slow down badly when anything else shares the 2 cores
JOBS        ?= 1
# null control cohort: matched sets of 3 (one anatomy, own noise, one PNI+ each, kept in one fold), so no
# anatomical parameter is associated with PNI by chance; NULL_SYNTH= gives independent cases instead
NULL_SYNTH  ?= --matched 3
NULL_CASES  := $(RUNS)/demo-null/data/cases.csv
NULL_DATA   := --data.runs_dir=$(RUNS) --data.cases=$(NULL_CASES)
NULL_CV     := $(NEONET) cv --jobs 3 $(CV_FLAGS)
# classifier configs of $(EXPERIMENTS) whose stage (= the config's name) `make controls` controls: those that read the
# label patch (`label_channel: true`), each trained again on manual-mask patches and with a constant image
CONTROLS    ?= pattennet_hist
# classifier configs controlled with manual-mask patches only (they read no label patch, so an image-free control means nothing)
MASK_CONTROLS ?= pattennet
# extra `neonet cv` options of every stage target, e.g. CV_FLAGS=--force re-trains finished folds (needed when a
# config changed after its folds were trained: neonet cv refuses to skip or resume them under other settings)
CV_FLAGS    ?=
CV          := $(NEONET) cv --jobs $(JOBS) $(CV_FLAGS)
# training seeds of the classifier targets, e.g. SEEDS="0 1 2": each seed's folds in <stage>_seed<s>/ (the config's
# seed keeps <stage>/), same splits and autoencoders; the report adds each seed's pooled AUC, mean ± sd and an interval
SEEDS       ?=
CLS_CV      := $(CV) $(if $(strip $(SEEDS)),--seeds $(SEEDS))
CLASSIFIER  ?= pattennet
# where `make export` writes the demo's bundle, and extra `neonet export` options (e.g. EXPORT_FLAGS=--force)
BUNDLE      ?= $(RUNS)/demo/bundle
EXPORT_FLAGS ?=
# the external cohort's cases.csv that `make evaluate` evaluates the demo's folds on
EXTERNAL    ?=
# written when every demo stage has finished; `make demo` then only prints the summary
DEMO_DONE   := $(RUNS)/demo/reports/demo_complete.txt
export WANDB_MODE ?= offline
# options of `make gpu-check` (benchmarks/gpu_check.py), e.g. ARGS="--device cpu --tiny" or ARGS="--budget_s 300",
# of `make strength-sweep` (benchmarks/strength_sweep.py) and `make twin-test` (benchmarks/twin_test.py), e.g. ARGS=--collect_only
ARGS        ?=

.PHONY: help install lint test test-slow demo synth check-data plan seg crop autoencoder diffusion controlnet synthesize pattennet pattennet-syn pattennet-hist pattennet-hist-syn confound baseline baselines radiomics report summary predict-case evaluate export null controls demo-full chaos clean-demo gpu-check strength-sweep twin-test

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'
	@echo ""
	@echo "Variables: EXPERIMENTS=$(EXPERIMENTS) (config folder), RUNS=$(RUNS), TORCH_SPEC=$(TORCH_SPEC), WANDB_MODE=$(WANDB_MODE)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv: torch first (CPU here), then neonet with dev extras

test: install ## run the default test suite (excludes tests marked slow)
	$(PY) -m pytest -m "not slow" -q

lint: install ## ruff (lint + format check on src, tests, benchmarks) and mypy on src/
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test-slow: install ## run only the slow tests
	$(PY) -m pytest -m slow -q

synth: install $(RUNS)/demo/data/cases.csv ## phantom demo cohort -> $(RUNS)/demo/data/cases.csv (kept if it exists)

$(RUNS)/demo/data/cases.csv:
	$(NEONET) synth --out $(RUNS)/demo/data --cases $(DEMO_CASES) --seed 0 $(DEMO_SYNTH)

check-data: install ## validate the demo cohort (every problem, one run)
	$(NEONET) check-data --cases $(RUNS)/demo/data/cases.csv

plan: install $(RUNS)/demo/data/cases.csv ## fingerprint the demo cohort; suggested spacing, NeoSeg and TLCR patch sizes -> $(RUNS)/demo/plans.*
	$(NEONET) plan --cases $(RUNS)/demo/data/cases.csv --experiment demo --runs_dir $(RUNS)

seg: install ## NeoSeg: train all folds, write out-of-fold masks and the Dice report
	$(CV) --config $(EXPERIMENTS)/seg.yaml

crop: install ## TLCR: tumour-centred patches from the out-of-fold NeoSeg masks
	$(NEONET) crop --config $(EXPERIMENTS)/crop.yaml

autoencoder: install ## NeoGen 1a: per-fold KL autoencoder on the patches, then its latent cache
	$(CV) --config $(EXPERIMENTS)/autoencoder.yaml

diffusion: install ## NeoGen 1b: per-fold latent DDPM on the cached latents
	$(CV) --config $(EXPERIMENTS)/diffusion.yaml

controlnet: install ## NeoGen 2: per-fold mask ControlNet on the frozen diffusion UNet
	$(CV) --config $(EXPERIMENTS)/controlnet.yaml

synthesize: install ## NeoGen: synthetic PNI+ patches per fold (1:1) + quality report
	$(NEONET) synthesize --config $(EXPERIMENTS)/synthesize.yaml --runs_dir $(RUNS)

pattennet: install ## NeoCls: PattenNet as the paper describes it on each fold (frozen fold autoencoder encoder, image patch)
	$(CLS_CV) --config $(EXPERIMENTS)/pattennet.yaml

pattennet-syn: install ## NeoCls: PattenNet on real + synthetic training patches (stage pattennet_syn)
	$(CLS_CV) --config $(EXPERIMENTS)/pattennet.yaml -- --model.stage=pattennet_syn --data.use_synthetic=true

pattennet-hist: install ## NeoCls: the histogram-head variant of PattenNet (stage pattennet_hist; label patch, shell + tumour)
	$(CLS_CV) --config $(EXPERIMENTS)/pattennet_hist.yaml

pattennet-hist-syn: install ## NeoCls: the histogram-head variant on real + synthetic patches (stage pattennet_hist_syn)
	$(CLS_CV) --config $(EXPERIMENTS)/pattennet_hist.yaml -- --model.stage=pattennet_hist_syn --data.use_synthetic=true

# the classifier config whose synthetic confound `make confound` measures (stages <config>_syn_both, <config>_syn_roundtrip)
CONFOUND    ?= pattennet_hist

confound: install ## the synthetic confound's remedies: PNI+ and PNI- synthetic patches (stage <CONFOUND>_syn_both), real training patches round-tripped (<CONFOUND>_syn_roundtrip), then the report
	$(NEONET) synthesize --config $(EXPERIMENTS)/synthesize.yaml --runs_dir $(RUNS) --classes both --neg_ratio null --name synthetic_both
	$(CV) --config $(EXPERIMENTS)/$(CONFOUND).yaml -- --model.stage=$(CONFOUND)_syn_both --model.model_name=$(CONFOUND)_syn_both \
		--data.use_synthetic=true --data.synthetic_set=synthetic_both
	$(CV) --config $(EXPERIMENTS)/$(CONFOUND).yaml -- --model.stage=$(CONFOUND)_syn_roundtrip --model.model_name=$(CONFOUND)_syn_roundtrip \
		--data.use_synthetic=true --data.roundtrip_real=true
	$(NEONET) report --experiment demo --runs_dir $(RUNS)

baseline: install ## NeoCls: the 3D ResNet-18 baseline only (what the demo runs)
	$(CLS_CV) --config $(EXPERIMENTS)/baseline_resnet18.yaml

baselines: install ## NeoCls: 3D ResNet-18, DenseNet-121, SE-ResNet-50 on the same folds, real and real + synthetic (stages <net>, <net>_syn)
	set -e; for net in resnet18 densenet121 seresnet50; do \
		$(CLS_CV) --config $(EXPERIMENTS)/baseline_$$net.yaml; \
		$(CLS_CV) --config $(EXPERIMENTS)/baseline_$$net.yaml -- --model.stage=$${net}_syn --data.use_synthetic=true; \
	done

radiomics: install ## radiomics baseline: IBSI tumour + shell features, L2 logistic regression per fold (stage radiomics), then the report
	$(NEONET) radiomics --config $(EXPERIMENTS)/radiomics.yaml --runs_dir $(RUNS)

report: install ## NeoCls cross-validation report (per fold, pooled AUC + CI, DeLong, ROC) in reports/
	$(NEONET) report --experiment demo --runs_dir $(RUNS)

summary: install ## print where the demo's results are, with its metrics
	$(NEONET) summary --experiment demo --runs_dir $(RUNS)

predict-case: install ## PNI for one new MRI: make predict-case IMAGE=scan.nii.gz [CLASSIFIER=pattennet|resnet18|radiomics|none]
	@test -n "$(IMAGE)" || { echo "usage: make predict-case IMAGE=path/to/scan.nii.gz [CLASSIFIER=pattennet|resnet18|radiomics|none]"; exit 2; }
	$(NEONET) predict-case $(IMAGE) --experiment demo --runs_dir $(RUNS) --classifier $(CLASSIFIER)

evaluate: install ## the demo's folds on an external cohort: make evaluate EXTERNAL=cohort/cases.csv
	@test -n "$(EXTERNAL)" || { echo "usage: make evaluate EXTERNAL=path/to/cases.csv"; exit 2; }
	$(NEONET) evaluate --experiment demo --runs_dir $(RUNS) --cases $(EXTERNAL)

export: install ## bundle of the demo's NeoSeg + classifier folds for predict-case --bundle: make export [BUNDLE=dir] [CLASSIFIER=...]
	$(NEONET) export --experiment demo --runs_dir $(RUNS) --out $(BUNDLE) --classifier $(CLASSIFIER) $(EXPORT_FLAGS)

demo: install ## whole pipeline on the phantom: synth, NeoSeg, TLCR, NeoGen, synthesize, PattenNet (+syn), its histogram variant, ResNet-18, radiomics, report
	@start=$$(date +%s); \
	if [ -f $(DEMO_DONE) ] && [ -z "$$(find experiments/demo Makefile -newer $(DEMO_DONE) -type f)" ]; then \
		echo "demo already complete ($(DEMO_DONE) is newer than every demo config); delete it to re-check each stage"; \
	else \
		$(MAKE) --no-print-directory synth seg crop autoencoder diffusion controlnet synthesize \
			pattennet pattennet-syn pattennet-hist baseline radiomics report EXPERIMENTS=experiments/demo JOBS=3 && \
		date -u +%Y-%m-%dT%H:%M:%SZ > $(DEMO_DONE) || exit 1; \
	fi; \
	$(MAKE) --no-print-directory summary && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

null: install ## null control: NeoSeg, TLCR, autoencoder, PattenNet (paper head + pattennet_hist), ResNet-18, radiomics on a matched --strength 0 phantom (experiment demo-null), report; pooled AUC ~0.5
	test -f $(NULL_CASES) || $(NEONET) synth --out $(RUNS)/demo-null/data --cases $(DEMO_CASES) --seed 0 --tumor_radius_mm [20,30] --strength 0 $(NULL_SYNTH)
	export OMP_NUM_THREADS=1; \
	$(NULL_CV) --config experiments/demo/seg.yaml --config experiments/demo/null/null.yaml -- $(NULL_DATA) && \
	$(NEONET) crop --config experiments/demo/null/crop.yaml --runs_dir $(RUNS) --cases $(NULL_CASES) && \
	$(NULL_CV) --config experiments/demo/autoencoder.yaml --config experiments/demo/null/null.yaml -- $(NULL_DATA) && \
	$(NULL_CV) --config experiments/demo/pattennet.yaml --config experiments/demo/null/null.yaml -- $(NULL_DATA) && \
	$(NULL_CV) --config experiments/demo/pattennet_hist.yaml --config experiments/demo/null/null.yaml -- $(NULL_DATA) && \
	$(NULL_CV) --config experiments/demo/baseline_resnet18.yaml --config experiments/demo/null/null.yaml -- $(NULL_DATA) && \
	$(NEONET) radiomics --config experiments/demo/radiomics.yaml --config experiments/demo/null/radiomics.yaml \
		--runs_dir $(RUNS) --cases $(NULL_CASES) --report false && \
	$(NEONET) report --experiment demo-null --runs_dir $(RUNS)

gpu-check: install ## one GPU, < 8 min: each paper stage's step time, memory, FLOPs/MFU, a short CLI fit, projected protocol time (ARGS=...)
	$(PY) benchmarks/gpu_check.py $(ARGS)

strength-sweep: install ## the chain on matched phantoms of PNI strength 2, 0, 1, 0.5 (sweep-s<S>), pooled AUC vs strength (ARGS=...)
	OMP_NUM_THREADS=1 $(PY) benchmarks/strength_sweep.py --runs_dir $(RUNS) $(ARGS)

twin-test: install ## after `make strength-sweep` (strength 2): PNI+ images replaced by their cuff-free twins, NeoSeg masks kept, classifiers retrained (ARGS=...)
	OMP_NUM_THREADS=1 $(PY) benchmarks/twin_test.py --runs_dir $(RUNS) --experiment sweep-s2 --strength 2 --matched 3 $(ARGS)

# the CHAOS MR T2-SPIR cohort beside the repository (never copied into it)
CHAOS_DIR   ?= ../shared/real_cohorts/chaos_mr_t2spir

chaos: install ## NeoSeg on real MRI: CHAOS T2-SPIR (10 livers), 5 folds at once on CPU (experiments/chaos/seg.yaml)
	@test -f $(CHAOS_DIR)/cases.csv || { echo "make chaos: $(CHAOS_DIR)/cases.csv not found: the CHAOS cohort must lie in ../shared/real_cohorts/chaos_mr_t2spir beside the repository (or set CHAOS_DIR=... and --data.cases through CV_FLAGS)"; exit 2; }
	OMP_NUM_THREADS=1 $(NEONET) cv --jobs 5 $(CV_FLAGS) --config experiments/chaos/seg.yaml -- --data.runs_dir=$(RUNS) --data.cases=$(CHAOS_DIR)/cases.csv

controls: install ## classifier controls: manual-mask patches (patches_manual/) and a constant image, stages <stage>_manualmask, <stage>_imagefree; report
	$(NEONET) crop --config $(EXPERIMENTS)/crop.yaml --runs_dir $(RUNS) --source manual --patches manual
	set -e; for stage in $(CONTROLS); do \
		$(CV) --config $(EXPERIMENTS)/$$stage.yaml --config $(EXPERIMENTS)/controls/manualmask.yaml -- --model.stage=$${stage}_manualmask; \
		$(CV) --config $(EXPERIMENTS)/$$stage.yaml --config $(EXPERIMENTS)/controls/imagefree.yaml -- --model.stage=$${stage}_imagefree; \
	done
	set -e; for stage in $(MASK_CONTROLS); do \
		$(CV) --config $(EXPERIMENTS)/$$stage.yaml --config $(EXPERIMENTS)/controls/manualmask.yaml -- --model.stage=$${stage}_manualmask; \
	done
	$(NEONET) report --experiment demo --runs_dir $(RUNS)

demo-full: install ## make demo, then make controls (3 folds at once, one CPU thread each)
	$(MAKE) --no-print-directory demo
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory controls JOBS=3

clean-demo: ## delete the demo experiment ($(RUNS)/demo)
	rm -rf $(RUNS)/demo
