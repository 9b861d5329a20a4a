# apes build, test and install. Node comes from node_modules (the pinned `node` package), never the machine.
SHELL := /bin/bash
NODE_BIN := $(CURDIR)/node_modules/.bin
export PATH := $(NODE_BIN):$(PATH)

.PHONY: all build bundle test lint typecheck check clean bench-startup

all: build

node_modules/.bin/node: package-lock.json
	npm ci
	@touch $@

build: node_modules/.bin/node
	node scripts/build.mjs

test: build
	npm test

lint: node_modules/.bin/node
	npx biome check .

typecheck: node_modules/.bin/node
	npx tsc --noEmit -p tsconfig.json

check: typecheck lint test

bench-startup: build
	node bench/startup.mjs

clean:
	rm -rf dist build
