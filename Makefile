# The two commands a newcomer needs: `make train` and `make test`.
# Both create .venv if it is missing and install from requirements.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test train install assets clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The default run: Houlsby adapter on MiniLM-L6 for rt_polarity (fetches both on first use).
train: $(STAMP)
	$(PY) scripts/assets.py fetch minilm-l6 rt_polarity
	$(PY) scripts/train.py --config experiments/configs/rt_houlsby.py $(ARGS)

assets: $(STAMP)
	$(PY) scripts/assets.py fetch minilm-l6 smollm2-135m

clean:
	rm -rf $(VENV) .pytest_cache
