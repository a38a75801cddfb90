# The README's two commands: `make demo` and `make test`. Both build .venv themselves.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
DEMO    ?= demo
STAMP   := $(VENV)/.installed

.PHONY: demo test venv clean

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

demo: $(STAMP)
	RAY_ADDRESS= $(VPY) cli.py make-sample $(DEMO)/data --seed 0
	$(VPY) cli.py data-stats $(DEMO)/data/twitter2015
	$(VPY) cli.py train --set data_dir=$(DEMO)/data --set dataset=twitter2015 \
	    --set save_path=$(DEMO)/run --set num_epochs=4 --set text_only=true
	$(VPY) cli.py evaluate $(DEMO)/run/best $(DEMO)/data/twitter2015/test.txt \
	    --out $(DEMO)/test_metrics.json --predictions $(DEMO)/test_predictions.txt
	@echo "demo outputs: $(DEMO)/run (checkpoint, metrics.json, train.log), $(DEMO)/test_metrics.json, $(DEMO)/test_predictions.txt"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
