# The README's two commands: `make demo` and `make test`. Both build .venv themselves.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
DEMO    ?= demo
STAMP   := $(VENV)/.installed
# the sample is small (300 train tweets): 8 epochs at the real-data learning rates; a 6-layer random ViT keeps it
# under 10 minutes on 2 cores
DEMO_TRAIN ?= --set num_epochs=8

.PHONY: demo test test-fast venv clean

$(VPY):
	$(PY) -m venv $(VENV)

# torch is pinned and installed first: that pin resolves to the CPU wheel on these machines.
$(STAMP): $(VPY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(VPY) -c "import torch; assert torch.__version__.endswith('+cpu') or torch.cuda.is_available(), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q

# everything but the tests marked slow (CI runs `make test`, all of them)
test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow"

demo: $(STAMP)
	mkdir -p $(DEMO) && $(VPY) cli.py make-sample $(DEMO)/data --seed 0 > $(DEMO)/sample.json
	$(VPY) cli.py extract-features --set data_dir=$(DEMO)/data --set dataset=twitter2015 \
	    --set cache_dir=$(DEMO)/cache --set random_vit_layers=6 --dump $(DEMO)/data/tweets.jsonl.gz --workers 2
	$(VPY) cli.py train --set data_dir=$(DEMO)/data --set dataset=twitter2015 --set cache_dir=$(DEMO)/cache \
	    --set save_path=$(DEMO)/run $(DEMO_TRAIN)
	$(VPY) cli.py evaluate $(DEMO)/run/best $(DEMO)/data/twitter2015/test.txt --set cache_dir=$(DEMO)/cache \
	    --out $(DEMO)/test_metrics.json --predictions $(DEMO)/test_predictions.txt
	$(VPY) cli.py tag-corpus $(DEMO)/data/tweets.jsonl.gz --model $(DEMO)/run/best --out $(DEMO)/tagged \
	    --set cache_dir=$(DEMO)/cache --workers 0
	$(VPY) cli.py report $(DEMO)/tagged
	@echo
	@echo "demo outputs:"
	@echo "  sample (DeepKE layout):  $(DEMO)/data/twitter2015, dump $(DEMO)/data/tweets.jsonl.gz"
	@echo "  feature cache (HDF5):    $(DEMO)/cache"
	@echo "  run (checkpoint, log):   $(DEMO)/run/best, $(DEMO)/run/metrics.json, $(DEMO)/run/train.log"
	@echo "  test metrics:            $(DEMO)/test_metrics.json, predictions $(DEMO)/test_predictions.txt"
	@echo "  tagged Parquet:          $(DEMO)/tagged/data (+ _state.sqlite, _rejects.jsonl)"
	@echo "  report:                  $(DEMO)/tagged/_report.html"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
