# step-ray: two commands for a newcomer.
#   make demo   full self-training loop on a small synthetic corpus, embedded local Ray (<= 15 min, 2 cores)
#   make test   the test suite (what CI runs)
# Both create or refresh the virtual environment at .venv first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The stamp changes with pyproject.toml, so editing dependencies re-runs the install.
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml Makefile | sha1sum | cut -c1-12)
OPENCV := opencv-python-headless==5.0.0.93

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test]"
	@# ultralytics depends on the GUI OpenCV build; remove it and restore the headless cv2 it overwrote.
	$(PY) -m pip uninstall --disable-pip-version-check -q -y opencv-python
	$(PY) -m pip install --disable-pip-version-check -q --force-reinstall --no-deps $(OPENCV)
	$(PY) -c "import cv2, importlib.metadata as m; assert 'opencv-python' not in {d.metadata['Name'] for d in m.distributions()}, 'GUI OpenCV still installed'"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: install
	$(VENV)/bin/step-ray self-train --config configs/demo.yaml

test: install
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf runs .pytest_cache
