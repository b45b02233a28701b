# The two commands of the README, on a fresh Debian 12 machine as root:
#   make demo   installs what is missing, starts the daemons, builds, imports the tiny
#               image, creates a 3-VM cluster and shows it
#   make test   installs what is missing and runs every test
SHELL := /bin/bash
.DEFAULT_GOAL := demo
# The toolchain lives in /opt/swift on these machines; make it found without a login shell.
export PATH := $(if $(wildcard /opt/swift/usr/bin),/opt/swift/usr/bin:,)$(PATH)

.PHONY: setup daemons build images debian-image demo cluster-demo test unit-test integration-test lint bench stop clean-demo

setup:
	scripts/setup.sh

daemons: setup
	scripts/daemons.sh start

build: setup
	swift build

images: setup
	images/tiny/build.sh images/build
	scripts/install-probe.sh

# The real Debian guest (debootstrap, ~2 min from nothing); only the tests need it.
debian-image: setup
	images/debian/build.sh images/build

demo: daemons build images
	scripts/demo.sh

# Several nodes on this machine (scripts/testbed.sh): three compute nodes and a storage
# node, each with its own daemons; a 4-VM cluster created through node 3.
cluster-demo: setup build images
	scripts/cluster-demo.sh

lint:
	swift format lint --strict --recursive Package.swift Sources Tests

unit-test: build
	swift test --skip IntegrationTests

integration-test: daemons build images debian-image
	swift test --no-parallel --filter IntegrationTests

# Suites one at a time: integration suites share libvirtd, and two cores.
test: daemons build images debian-image lint
	swift test --no-parallel

bench: daemons build images
	bench/run.sh

# Stops the demo's vcd; the daemons stay (scripts/daemons.sh stop stops them).
stop:
	scripts/vcd.sh stop

clean-demo:
	-$$(swift build --show-bin-path)/vc cluster destroy demo
	scripts/vcd.sh stop
