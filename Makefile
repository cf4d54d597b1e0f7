# MANGOS build farm. Two commands matter:
#   make demo   all set-up on a fresh Debian 12 machine, then build the demo recipes
#   make test   all set-up, then every test (ruff, mypy, pytest)
# Set-up is a fast no-op when everything is already installed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MANGOS_FARM_HOME ?= $(CURDIR)/.mangos

# Debian packages the farm and its tests use (installed as root; others get the command to run). iptables: podman's
# network backend netavark runs it (a Recommends, which --no-install-recommends leaves out).
APT_PACKAGES := git bubblewrap build-essential python3-venv ca-certificates openssl dpkg dpkg-dev redis-server \
	chromium chromium-driver prometheus mmdebstrap \
	erofs-utils cryptsetup-bin fdisk dosfstools mtools sbsigntool binutils systemd-boot-efi systemd-container \
	faketime qemu-system-x86 ovmf swtpm swtpm-tools diffoscope-minimal disorderfs util-linux mount coreutils eatmydata locales hostname uidmap \
	podman podman-compose runc catatonit netavark aardvark-dns iproute2 nodejs \
	python3-async-timeout iptables

# Debian source packages (farm/sources/dsc.py) come from deb-src entries mirroring every system 'deb' entry for
# $(DEBIAN_SUITE) and its update suites ($(DEBIAN_SUITE)-updates, $(DEBIAN_SUITE)-security, ...): same URIs, Suites,
# Components and Signed-By, so sources come from the very archives (or snapshots) this machine installs binaries
# from, security fixes included; plus $(DEBIAN_SUITE)-backports beside every main-suite entry, sources and binaries
# (backports is NotAutomatic: apt installs from it only what is asked for by suite, as the image's systemd 254 is;
# the farm builds systemd 254 from its source, recipes/systemd/). The file
# carries a format marker; one written by an older farm is rewritten. apt-get update runs only when the file changes.
DEBIAN_SUITE ?= bookworm
DEB_SRC_LIST := /etc/apt/sources.list.d/mangos-deb-src.sources
DEB_SRC_MARK := \# mangos-farm deb-src v4: every suite the machine installs from, and backports (deb + deb-src)
DEB_SRC_AWK := BEGIN { RS = ""; FS = "\n" } { deb = 0; want = 0; main = 0; out = ""; bp = ""; for (i = 1; i <= NF; i++) { l = $$i; if (l ~ /^\#/) continue; if (l ~ /^Types:/) { if ((l " ") ~ /[ \t]deb[ \t]/) deb = 1; l = "Types: deb-src" } if (l ~ /^Suites:/ && (l " ") ~ /[ \t]$(DEBIAN_SUITE)(-[a-z]+)?[ \t]/) want = 1; if (l ~ /^Suites:/ && (l " ") ~ /[ \t]$(DEBIAN_SUITE)[ \t]/) main = 1; if (l ~ /^Suites:/ && (l " ") ~ /[ \t]$(DEBIAN_SUITE)-backports[ \t]/) hasbp = 1; out = out l "\n"; bp = bp (l ~ /^Suites:/ ? "Suites: $(DEBIAN_SUITE)-backports" : (l ~ /^Types:/ ? "Types: deb deb-src" : l)) "\n" } if (deb && want) printf "%s%s", (n++ ? "\n" : ""), out; if (deb && main) bps = bps "\n" bp } END { if (!hasbp) printf "%s", bps }

.PHONY: setup apt venv node-deps demo-sources demo image boot kernel base base-import test lint pytest bench clean

setup: apt venv demo-sources node-deps

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing -- run: sudo apt-get install$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@if ! grep -qsF '$(DEB_SRC_MARK)' $(DEB_SRC_LIST) $(DEB_SRC_LIST:.sources=.list); then \
	  if [ "$$(id -u)" != 0 ]; then echo "no deb-src entries for every $(DEBIAN_SUITE) suite -- run 'make apt' as root"; exit 1; fi; \
	  rm -f $(DEB_SRC_LIST) $(DEB_SRC_LIST:.sources=.list); \
	  if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
	    { echo '$(DEB_SRC_MARK)'; awk '$(DEB_SRC_AWK)' /etc/apt/sources.list.d/debian.sources; } > $(DEB_SRC_LIST).tmp; \
	    target=$(DEB_SRC_LIST); \
	  else \
	    { echo '$(DEB_SRC_MARK)'; { sed -n -E 's/^deb (.* $(DEBIAN_SUITE)(-[a-z]+)? .*)/deb-src \1/p' /etc/apt/sources.list; \
	      sed -n -E 's/^deb (.*) $(DEBIAN_SUITE) (.*)/deb-src \1 $(DEBIAN_SUITE)-backports \2\ndeb \1 $(DEBIAN_SUITE)-backports \2/p' /etc/apt/sources.list; } \
	      | awk '!seen[$$0]++'; } > $(DEB_SRC_LIST).tmp; \
	    target=$(DEB_SRC_LIST:.sources=.list); \
	  fi; \
	  if ! grep -q '^Types: deb-src\|^deb-src ' $(DEB_SRC_LIST).tmp; then rm -f $(DEB_SRC_LIST).tmp; \
	    echo "no 'deb' entry for $(DEBIAN_SUITE) in the apt sources: add one with a deb-src twin"; exit 1; fi; \
	  mv $(DEB_SRC_LIST).tmp $$target && echo "wrote $$target" && apt-get update -qq; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# compat: a .pth naming the checkout, not an import-hook finder (which costs every Python start ~10 ms)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# KEDA's CRD schemas for tests/deploy/test_kubernetes.py (npm, pinned by the lock file). Debian's nodejs comes
# without npm (its own package); a nodejs that bundles npm must not get Debian's npm on top.
KEDA_SCHEMAS := tests/deploy/keda
node-deps: $(KEDA_SCHEMAS)/node_modules/.package-lock.json

$(KEDA_SCHEMAS)/node_modules/.package-lock.json: $(KEDA_SCHEMAS)/package.json $(KEDA_SCHEMAS)/package-lock.json
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
	npm ci --prefix $(KEDA_SCHEMAS) --no-audit --no-fund

demo-sources: demo/git/.made

demo/git/.made: demo/make_sources.py $(shell find demo/src -type f 2>/dev/null)
	$(BIN)/python demo/make_sources.py demo/git
	touch $@

demo: setup
	$(BIN)/mangos-farm keys generate --if-missing
	$(BIN)/mangos-farm env build bookworm-amd64 --if-missing
	$(BIN)/mangos-farm recipes check recipes
	$(BIN)/mangos-farm rebuild recipes
	@for r in recipes/*.toml; do \
	  commit=$$(sed -n 's/^commit = "\(.*\)"/\1/p' $$r); \
	  echo "$(BIN)/mangos-farm fetch --commit $$commit -o out/demo"; \
	  $(BIN)/mangos-farm fetch --commit $$commit -o out/demo || exit 1; \
	done
	$(BIN)/mangos-farm verify out/demo
	out/demo/greet MANGOS
	@for r in recipes/debian/*.toml; do \
	  commit=$$(sed -n 's/^commit = "\(.*\)"/\1/p' $$r); \
	  $(BIN)/mangos-farm fetch --commit $$commit -o out/debian >/dev/null || exit 1; \
	done
	$(BIN)/mangos-farm verify out/debian
	@for d in out/debian/*.deb; do dpkg-deb --info $$d >/dev/null && dpkg-deb --contents $$d >/dev/null || exit 1; done
	@echo; echo "Debian packages built from source, each with its signed provenance beside it:"; \
	  ls -1 $(CURDIR)/out/debian/*.deb

# The signed MANGOS image from the demo's farm-built .debs (a few minutes the first time), checked with our own
# verifier and traced from a file back to its source commit; `make boot` then boots it under Secure Boot (QEMU/OVMF).
# A demo build older than the archive's version (zlib: the mirror cannot serve bookworm-security's source) gives way
# to the archive's package: --allow-archive-fallback, and the SBOM and out/image/image.lock give the reason.
# The kernel is the farm's own (recipes/kernel/) when the kernel home MANGOS_KERNEL_HOME (default ~/mangos-kernel,
# where `make kernel MANGOS_FARM_HOME=...` keeps its ~20 min compile; the QEMU tests share it) has it compiled; else
# Debian's. The farm's kernel accepts only a root signed by the certificate built into it, that home's release
# certificate: the image is then signed with that home's release keys (out/image.release names the ones used, for
# `make boot`), this farm trusts that home's builder key (it signed the kernel), and the image gets systemd 254 from
# bookworm-backports (--systemd backports), which kernel-checked confext/sysext need.
RELEASE := $(MANGOS_FARM_HOME)/release
MANGOS_KERNEL_HOME ?= $(HOME)/mangos-kernel
IMAGE_KERNEL := out/image-kernel
# (Three recipe lines, the recursive `make kernel` alone in the middle one: `make -n image` runs that line, only.)
image: demo
	$(BIN)/mangos-farm keys generate --release --if-missing
	rm -rf out/image out/image.release $(IMAGE_KERNEL) $(IMAGE_KERNEL).compiled
	@mkdir -p out; \
	if compiled=$$(MANGOS_FARM_HOME=$(MANGOS_KERNEL_HOME) $(BIN)/mangos-farm plan recipes/kernel --json 2>/dev/null \
	    | $(BIN)/python -c "$$KERNEL_COMPILED_KEY"); then \
	  echo "image: the farm's kernel (compiled in $(MANGOS_KERNEL_HOME), build $$compiled)"; \
	  echo "$$compiled" > $(IMAGE_KERNEL).compiled; echo "$(MANGOS_KERNEL_HOME)/release" > out/image.release; \
	else \
	  echo "image: Debian's kernel (none compiled in $(MANGOS_KERNEL_HOME): make kernel MANGOS_FARM_HOME=$(MANGOS_KERNEL_HOME))"; \
	  echo "$(RELEASE)" > out/image.release; \
	fi
	@if [ -s $(IMAGE_KERNEL).compiled ]; then \
	  $(MAKE) --no-print-directory kernel MANGOS_FARM_HOME=$(MANGOS_KERNEL_HOME) KERNEL_OUT=$(CURDIR)/$(IMAGE_KERNEL); fi
	@release=$$(cat out/image.release); flags=""; \
	if [ -s $(IMAGE_KERNEL).compiled ]; then \
	  commit=$$(sed -n 's/^commit = "\(.*\)"/\1/p' recipes/kernel/linux-mangos.toml); set -e; \
	  MANGOS_FARM_HOME=$(MANGOS_KERNEL_HOME) $(BIN)/mangos-farm fetch --commit $$commit --recipe linux-mangos \
	    --build-key $$(cat $(IMAGE_KERNEL).compiled) -o $(IMAGE_KERNEL) >/dev/null; \
	  $(BIN)/mangos-farm verify $(IMAGE_KERNEL) >/dev/null 2>&1 \
	    || $(BIN)/mangos-farm keys trust $(MANGOS_KERNEL_HOME)/keys/builder.pub; \
	  flags="--kernel $(IMAGE_KERNEL) --systemd backports --release-keys $$release"; \
	fi; \
	set -ex; \
	$(BIN)/mangos-farm image build -o out/image --allow-archive-fallback $$flags; \
	$(BIN)/mangos-farm image verify out/image/mangos_*.raw --cert $$release/verity.crt --db-cert $$release/db.crt; \
	$(BIN)/mangos-farm trace out/image/mangos_*.raw /usr/bin/hello --cert $$release/verity.crt; \
	if [ -n "$$flags" ]; then $(BIN)/mangos-farm trace out/image/mangos_*.raw uki:.linux --cert $$release/verity.crt; fi

boot:
	@ls out/image/mangos_*.raw >/dev/null 2>&1 || { echo "no image in out/image: run 'make image' first"; exit 1; }
	$(BIN)/mangos-farm image boot out/image/mangos_*.raw --release-keys $$(cat out/image.release 2>/dev/null || echo $(RELEASE))

# The MANGOS kernel (recipes/kernel/, a recipe set of its own): compiled once (~20 min on 2 cores, cached in the
# store after that), then this farm's verity certificate inserted into it (seconds). Point MANGOS_FARM_HOME (or
# MANGOS_FARM_STORE) at a directory outside the checkout to keep the compiled kernel between checkouts.
# KERNEL_OUT: where the verified vmlinuz and kernel.release (with their provenance) are fetched to; `image build
# --kernel $(KERNEL_OUT)` puts that kernel into the image. The QEMU tests (tests/lib/kernel.py) use MANGOS_KERNEL_HOME
# (default ~/mangos-kernel) as the persistent home; .ci/run makes the kernel there before `make test`.
KERNEL_CERT := recipes/kernel/organization.crt
KERNEL_OUT ?= out/kernel
kernel: setup
	$(BIN)/mangos-farm keys generate --if-missing
	$(BIN)/mangos-farm keys generate --release --if-missing
	$(BIN)/mangos-farm env build bookworm-kernel --if-missing
	cmp -s $(RELEASE)/verity.crt $(KERNEL_CERT) || cp $(RELEASE)/verity.crt $(KERNEL_CERT)
	$(BIN)/mangos-farm recipes check recipes/kernel
	MANGOS_FARM_BUILD_TIMEOUT=$${MANGOS_FARM_BUILD_TIMEOUT:-7200} $(BIN)/mangos-farm rebuild recipes/kernel
	rm -rf $(KERNEL_OUT)
	key=$$($(BIN)/mangos-farm plan recipes/kernel --json | $(BIN)/python -c "$$KERNEL_IMAGE_KEY"); \
	commit=$$(sed -n 's/^commit = "\(.*\)"/\1/p' recipes/kernel/linux-image-mangos.toml); \
	  $(BIN)/mangos-farm fetch --commit $$commit --recipe linux-image-mangos --build-key $$key -o $(KERNEL_OUT)
	$(BIN)/mangos-farm verify $(KERNEL_OUT)
	@echo "kernel: $(abspath $(KERNEL_OUT))/vmlinuz ($$(cat $(KERNEL_OUT)/kernel.release)), certificate $(KERNEL_CERT)"

# The whole base image from source: recipes/base/ holds a recipe per source package behind the image's packages
# (docker profile included), written by `make base-import` (`recipes import --image`); the sources the archive here
# cannot serve are listed in recipes/base/unavailable.json with the reason, and stay archive binaries. Cycles are cut
# into bootstrap edges (`plan recipes/base` lists them). A full rebuild takes hours on 2 cores, so its home and store
# live outside the work tree ($(MANGOS_BASE_HOME)): a fresh checkout resumes where the last run stopped.
MANGOS_BASE_HOME ?= $(HOME)/mangos-base
BASE_FARM := MANGOS_FARM_HOME=$(MANGOS_BASE_HOME) $(BIN)/mangos-farm
base: setup
	$(BASE_FARM) keys generate --if-missing
	$(BASE_FARM) env build bookworm-amd64 --if-missing
	$(BASE_FARM) recipes check recipes/base
	$(BASE_FARM) plan recipes/base
	MANGOS_FARM_BUILD_TIMEOUT=$${MANGOS_FARM_BUILD_TIMEOUT:-9000} $(BASE_FARM) rebuild recipes/base

base-import: setup
	$(BASE_FARM) env build bookworm-amd64 --if-missing
	nice -n 10 $(BASE_FARM) recipes import --image --profile docker --dir recipes/base

# The build key of the kernel image with the current certificate (the store may hold one per certificate it had).
define KERNEL_IMAGE_KEY
import json, sys
print({b["recipe"]: b for b in json.load(sys.stdin)["builds"]}["linux-image-mangos"]["build_key"])
endef
export KERNEL_IMAGE_KEY

# The build key of the compiled kernel (linux-mangos) when the plan has it cached; exits 1 when it would build.
define KERNEL_COMPILED_KEY
import json, sys
build = {b["recipe"]: b for b in json.load(sys.stdin)["builds"]}["linux-mangos"]
sys.exit(print(build["build_key"]) if build["decision"] == "cached" else 1)
endef
export KERNEL_COMPILED_KEY

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Two pytest-xdist workers: tests sharing an expensive session fixture stay on one (tests/lib/xdist_groups.py).
PYTEST_WORKERS ?= 2
pytest: setup
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: lint pytest

bench: setup
	$(BIN)/python -m bench.bench_plan --recipes 1000

clean:
	rm -rf $(VENV) demo/git out .mypy_cache .ruff_cache .pytest_cache
