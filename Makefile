# anyplane: `make demo` compiles and checks the bookinfo example (it installs only what that needs:
# clang and libbpf, the virtualenv); `make test` sets up everything the test suite needs (Debian
# packages, a virtualenv, bpffs, the side environments) and runs it.
# Every step is idempotent: run it as often as you like.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo compiles for every engine: clang and libbpf build the kernel's program. The suite needs more
# (the live tiers: the kernel's tools, a browser for the map page, kubectl as the YAML oracle).
DEMO_PACKAGES := clang llvm libbpf-dev
APT_PACKAGES := $(DEMO_PACKAGES) bpftool iproute2 wrk curl graphviz chromium nodejs kubectl
PYTEST_ARGS ?=

.PHONY: demo test test-fast setup sysdeps demo-sysdeps venv bpffs p4tools nca p4sh kmodels bench maps clean

demo: demo-sysdeps venv
	$(BIN)/anyplane check examples/bookinfo.ap
	$(BIN)/anyplane compile examples/bookinfo.ap -t ir -o out/bookinfo/ir
	$(BIN)/anyplane compile examples/bookinfo.ap -t ebpf -o out/bookinfo/ebpf
	$(BIN)/anyplane compile examples/bookinfo.ap -t envoy -o out/bookinfo/envoy
	$(BIN)/anyplane compile examples/bookinfo.ap -t p4 -o out/bookinfo/p4
	$(BIN)/anyplane compile examples/bookinfo.ap -t all --path fabric,kernel,sidecar -o out/bookinfo/all
	@cat out/bookinfo/all/placement.txt
	$(BIN)/anyplane verify examples/bookinfo.ap
	$(BIN)/anyplane query examples/bookinfo.ap 'internet -> mysql tcp 3306'
	$(BIN)/anyplane explain examples/bookinfo.ap --flow 'internet -> productpage http GET /admin/users'

test: setup
	$(BIN)/python -m pip check  # one current stack: protobuf 6, grpcio, finsy's P4Runtime, xds-protos
	$(BIN)/python -m pytest -q -n 2 --durations=25 $(PYTEST_ARGS)

# The suite without its live tiers (kernel, Envoy, the real switch, the peer analyzer, the browser) and
# its soak tests: the language, the IR, the verifier, the importers and exporters, a few minutes on two
# cores. CI runs everything (`make test`).
FAST := not kernel and not envoy and not switch and not peer and not browser and not slow
test-fast: sysdeps venv kmodels
	$(BIN)/python -m pytest -q -n 2 -m "$(FAST)" $(PYTEST_ARGS)

setup: sysdeps venv bpffs p4tools nca p4sh kmodels

# p4runtime-shell, the tool an operator opens on a switch, pins protobuf 3.20: it gets an environment
# of its own, and tests/backends/p4/test_p4.py has it read back what anyplane pushed.
P4SH_VERSION := 0.0.6
p4sh: .p4sh/.installed-$(P4SH_VERSION)
.p4sh/.installed-$(P4SH_VERSION):
	test -x .p4sh/bin/python || $(PYTHON) -m venv .p4sh
	.p4sh/bin/python -m pip install -q --disable-pip-version-check 'p4runtime-shell==$(P4SH_VERSION)'
	touch $@

# The published schemas of Istio's and Cilium's resources (their CRDs' OpenAPI schemas, as the
# kubernetes-models packages carry them): the exporters' output is validated against them.
KMODELS := @kubernetes-models/istio@3.0.1 @kubernetes-models/cilium@4.0.0
kmodels: .kmodels/.installed-istio-3.0.1-cilium-4.0.0
.kmodels/.installed-istio-3.0.1-cilium-4.0.0: | sysdeps
	command -v npm >/dev/null || apt-get install -y -q npm
	npm install --silent --no-audit --no-fund --prefix .kmodels $(KMODELS)
	touch $@

# IBM's network-config-analyzer, the peer the Kubernetes importer is checked against
# (tests/importers/test_nca_agreement.py): a virtualenv of its own, since its pins clash with ours.
NCA_VERSION := 2.1.0
nca: .nca/.installed-$(NCA_VERSION)
.nca/.installed-$(NCA_VERSION):
	test -x .nca/bin/python || $(PYTHON) -m venv .nca
	.nca/bin/python -m pip install -q --disable-pip-version-check 'network-config-analyzer==$(NCA_VERSION)'
	touch $@

# The P4 reference toolchain (p4c, BMv2) is not in the package registries: it comes prebuilt from
# ../shared/p4-toolchain when that folder exists (the tests that need it skip, and say so, without it).
P4_SHARED := $(abspath ../shared/p4-toolchain)
p4tools:
	@if [ -x "$(P4_SHARED)/install.sh" ]; then "$(P4_SHARED)/install.sh" "$(CURDIR)/.p4tools" >/dev/null; \
	else echo "no $(P4_SHARED): the real-P4 tests will skip"; fi

# Installs the Debian packages of a list that are missing (none: nothing is done).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

sysdeps:
	$(call apt_install,$(APT_PACKAGES))

demo-sysdeps:
	$(call apt_install,$(DEMO_PACKAGES))

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# p4runtime-shell (protobuf 3.20) moved to its own environment (make p4sh): gone from this one.
	$(BIN)/python -m pip uninstall -q -y p4runtime-shell p4runtime ipython jedi >/dev/null 2>&1 || true
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

bench: setup
	$(BIN)/python bench/frontend.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/ebpf.py
	$(BIN)/python bench/envoy.py
	$(BIN)/python bench/mtls.py
	$(BIN)/python bench/fabric.py --bmv2
	$(BIN)/python bench/compose.py
	$(BIN)/python bench/wide.py
	$(BIN)/python bench/language.py
	$(BIN)/python bench/conntrack.py
	$(BIN)/python bench/xds.py

# The connectivity map of every example, drawn for docs/maps/ (docs/import.md, docs/verify.md show them).
EXAMPLES := bookinfo canary ecommerce edge-firewall zero-trust kubernetes istio workloads mesh
maps: setup
	@mkdir -p docs/maps
	@for e in $(EXAMPLES); do src=examples/$$e; [ -e $$src ] || src=$$src.ap; \
	  $(BIN)/anyplane map $$src --format svg > docs/maps/$$e.svg && echo "docs/maps/$$e.svg"; done

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis .p4tools .nca .p4sh .kmodels
