# Set-up is part of every target: a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-arm64 bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# numba's kernels compiled into its cache once per clone (`microstream warmup`), as a deployment does at install:
# on a cold cache the demo's hosts compile them mid-run, and its migration's barrier waits behind the compilation
WARM := $(VENV)/.warmed
$(WARM): $(STAMP)
	$(BIN)/microstream warmup
	touch $(WARM)

# The demo: air-quality stations publishing over MQTT (a mosquitto broker it starts, installed with apt-get if
# missing) into an embedded 4-agent cluster; one station's virtual node migrates mid-run (examples/sensors/air_quality).
demo: $(WARM)
	$(BIN)/python examples/sensors/air_quality/demo.py

test: lint
	@# QEMU and the image tools for the microVM backend's tests (apt-get, as root; a no-op once installed)
	-$(BIN)/python -c "from microstream.unikernel_backend.image import ensure_host_tools; ensure_host_tools()"
	@# a Prometheus server for the metrics test (apt-get, as root; a no-op once installed)
	-$(BIN)/python -c "from microstream.cluster.prometheus import ensure_prometheus; ensure_prometheus()"
	@# mosquitto, the MQTT broker the connector tests start on loopback (apt-get, as root; a no-op once installed)
	-$(BIN)/python -c "from microstream.connectors.broker import ensure_mosquitto; ensure_mosquitto()"
	@# Chromium, the browser the web console's test drives headless (apt-get, as root; a no-op once installed)
	-$(BIN)/python -c "import shutil; from microstream.core.sysdeps import apt_install; shutil.which('chromium') or apt_install(['chromium'], 'the web console test')"
	@# systemd-analyze, which checks the units `microstream service install` writes (apt-get; a no-op once installed)
	-$(BIN)/python -c "import shutil; from microstream.core.sysdeps import apt_install; shutil.which('systemd-analyze') or apt_install(['systemd'], 'the service units test')"
	@# three workers (pytest-xdist) on 2 cores: most cluster tests wait on real time, so two left CPU idle.
	@# --dist loadfile: a module runs on one worker, in order (module-scoped clusters; a test may read what an
	@# earlier test of its module ran)
	$(BIN)/pytest -n 3 --dist loadfile --durations=25

# The day-to-day lane: the tests not marked `slow` (no real-process clusters, microVMs, demo, Prometheus), about
# 2 minutes on 2 cores (two workers: these tests compute, so one each); no lint. Only mosquitto to install.
# `make test` (CI) runs everything.
test-fast: $(STAMP)
	@# mosquitto, the MQTT broker the connector tests start on loopback (apt-get, as root; a no-op once installed)
	-$(BIN)/python -c "from microstream.connectors.broker import ensure_mosquitto; ensure_mosquitto()"
	$(BIN)/pytest -n 2 --dist loadfile -m "not slow"

# arm64 under emulation (qemu-user-static, a debootstrapped Debian arm64 root cached in ~/.cache/microstream/arm64;
# needs root): the core tests and the examples after `microstream warmup` there, then bench/arm64.py's figures.
# Not part of `make test`: its first run builds the root (minutes) and everything runs ~10x slower emulated.
test-arm64: $(STAMP)
	MICROSTREAM_ARM64_LANE=1 $(BIN)/pytest -p no:cacheprovider tests/arm64
	$(BIN)/python bench/arm64.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check microstream tests bench examples
	$(BIN)/lint-imports
	$(BIN)/mypy microstream

clean:
	rm -rf $(VENV) out .pytest_cache .microstream
