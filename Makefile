# make serve   install and run the daemon with the default model (facebook/musicgen-small)
# make test    install everything the tests need and run them
# make lint    ruff, mypy, the import contract (lint-imports) and no import circle (tools/check_imports.py)
PYTHON ?= python3
APT_PACKAGES = liblo-tools libportaudio2 libsndfile1 jackd2 lua5.4 lua-socket g++ iproute2

.PHONY: install install-test system-deps serve test lint demo

install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[test,link]'  # link: the Link tests (LinkPython-extern, GPL; optional for users)

# Real peers for the tests: liblo's oscsend/oscdump, JACK's dummy backend, PortAudio, Lua; g++ builds
# the native int8 kernel (bridge/engine/kernels); iproute2: the Link tests' private network (unshare -rn).
system-deps:
	@if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else echo "install these yourself: $(APT_PACKAGES)"; fi

serve: install
	musicgen-bridge serve

demo: install
	musicgen-bridge generate "dusty lofi keys" --bpm 92 --bars 4 --model tiny-random

test: system-deps install-test
	$(PYTHON) -m pytest -q

lint: install-test
	$(PYTHON) -m ruff check bridge tests tools daw_scripts/ableton $(wildcard benchmarks)
	$(PYTHON) -m mypy  # bridge, tools, benchmarks and tests (pyproject.toml)
	MYPYPATH=daw_scripts/ableton $(PYTHON) -m mypy --disallow-untyped-defs -p MusicGenBridge  # against ableton-live-stubs
	lint-imports  # the layers: front ends -> app -> engine | audio -> core (pyproject.toml)
	$(PYTHON) tools/check_imports.py  # the same contracts counting imports by name, and no import circle at all
