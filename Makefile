# Vigil developer entry points. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vigil-installed

.PHONY: demo test wheel package lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the packaging metadata changes; the install is editable, so code
# edits need no reinstall.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vigil.collector.demo

# Two workers, a test file each at a time (--dist loadfile: a file's module fixtures,
# such as a built wheel or .deb, are made once). `.venv/bin/python -m pytest FILE` runs
# one file serially.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The installable wheel, in dist/ (tests/integration/test_wheel.py builds and checks the
# same). build/ goes first: setuptools reuses it, so a module deleted since the last build
# would otherwise still ship.
wheel: $(STAMP)
	rm -rf build
	$(BIN)/python -m build --wheel --outdir dist .

# The agent's Debian package, dist/vigil-agent_<version>_<arch>.deb: the wheel plus the
# agent's dependency wheels for each CPython in PYTHONS (downloaded now; installing it is
# offline). tests/integration/test_deb_package.py builds, installs and purges the same.
PYTHONS ?= 3.11,3.12,3.13
package: $(STAMP)
	$(BIN)/python packaging/build_deb.py --out dist --pythons $(PYTHONS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var .pytest_cache build dist src/*.egg-info *.egg-info
