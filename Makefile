# apes build, test and install. Node comes from node_modules (the pinned `node` package), never the machine.
SHELL := /bin/bash
NODE_BIN := $(CURDIR)/node_modules/.bin
export PATH := $(NODE_BIN):$(PATH)

.PHONY: all build bundle test test-deps lint typecheck check clean bench-startup bench-cli bench-idp bench-idp-flood bench-idp-instances bench-idp-workers bench-troop bench-approval bench-notify

all: build

# npm writes node_modules/.package-lock.json on every install: a stamp that is newer than the lock file.
NODE_STAMP := node_modules/.package-lock.json
$(NODE_STAMP): package-lock.json
	npm ci

build: $(NODE_STAMP)
	node scripts/build.mjs

# Every test: builds dist/apes first (the integration and e2e tests drive it). As root, since the
# e2e tests install the setuid shim into a temp prefix and run it as a real non-root user.
test: build
	npm test

# The Debian packages the tests need (test/debian-packages.txt), installed when missing.
test-deps:
	@missing=$$(grep -v '^#' test/debian-packages.txt | while read -r p; do dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

lint: $(NODE_STAMP)
	npx biome check .

typecheck: $(NODE_STAMP)
	npx tsc --noEmit -p tsconfig.json

check: typecheck lint test

bench-startup: build
	node bench/startup/run.mjs

bench-cli: build
	node bench/cli/run.mjs

bench-idp: build
	node bench/idp/run.ts

bench-idp-flood: build
	node bench/idp-flood/run.mjs

bench-idp-instances: build
	node bench/idp-instances/run.ts

bench-idp-workers: build
	node bench/idp-workers/run.ts --one-core
	node bench/idp-workers/crypto-offload.ts

bench-troop: build
	node bench/troop/run.ts

bench-approval: build
	node bench/approval-pages/run.ts

bench-notify: build
	node bench/notify/run.mjs

clean:
	rm -rf dist build

# ---- setuid shim (native/) ----------------------------------------------------------------------
# Paths are compiled into the shim; rebuilding with other PREFIX/SYSCONFDIR/LOCALSTATEDIR values is
# detected through $(NATIVE_OUT)/paths.stamp. NATIVE_OUT lets tests build into their own directory.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
LOCALSTATEDIR ?= /var
DESTDIR ?=
NATIVE_OUT ?= native
FUZZ_TIME ?= 20
APES_EXEC_PATH := $(PREFIX)/libexec/apes/apes
# How long an early verifier may wait beside a request for its approval before it is killed (a fresh
# one then starts at approval, ~30-60 ms later on the elevation's path): long enough for a person to
# decide (docs/elevation.md section 3). Tests of the kill path build with a short one.
EARLY_IDLE_MS ?= 600000
NATIVE_PATHS := -DAPES_EXEC='"$(APES_EXEC_PATH)"' -DAPES_EXEC_DIR='"$(PREFIX)/libexec/apes"' \
  -DAPES_CONFIG='"$(SYSCONFDIR)/apes/config.toml"' -DAPES_AUDIT_LOG='"$(LOCALSTATEDIR)/log/apes/audit.log"' \
  -DAPES_CACHE_DIR='"$(LOCALSTATEDIR)/cache/apes"' -DAPES_SLOT_DIR='"$(LOCALSTATEDIR)/lib/apes"' \
  -DEARLY_IDLE_MS=$(EARLY_IDLE_MS)
NATIVE_WARN := -std=c11 -Wall -Wextra -Werror -Wformat=2 -Wformat-security -Wshadow -Wvla -Wstrict-prototypes
NATIVE_CFLAGS := $(NATIVE_WARN) -O2 -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=3 -fstack-protector-strong \
  -fstack-clash-protection -fcf-protection -fPIE
NATIVE_LDFLAGS := -pie -Wl,-z,relro,-z,now -Wl,-z,noexecstack
NATIVE_SAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
NATIVE_LIB := native/sha256.c native/utf8.c native/json.c native/elev.c native/secure.c native/proc.c native/sock.c native/resident.c native/warm.c
NATIVE_HDR := native/sha256.h native/utf8.h native/json.h native/elev.h native/secure.h native/proc.h native/sock.h native/resident.h native/warm.h

.PHONY: native native-test native-fuzz install uninstall FORCE

native: $(NATIVE_OUT)/apes-shim $(NATIVE_OUT)/test-hash

$(NATIVE_OUT)/paths.stamp: FORCE
	@mkdir -p $(NATIVE_OUT)
	@echo '$(NATIVE_PATHS)' | cmp -s - $@ || echo '$(NATIVE_PATHS)' > $@

$(NATIVE_OUT)/apes-shim: native/apes-shim.c $(NATIVE_LIB) $(NATIVE_HDR) $(NATIVE_OUT)/paths.stamp
	$(CC) $(NATIVE_CFLAGS) $(NATIVE_PATHS) native/apes-shim.c $(NATIVE_LIB) $(NATIVE_LDFLAGS) -o $@.tmp
	mv -f $@.tmp $@

# Prints the shim's cmd_hash for an argv (differential test against protocol/cmd-hash.ts).
$(NATIVE_OUT)/test-hash: native/test-hash.c $(NATIVE_LIB) $(NATIVE_HDR)
	@mkdir -p $(NATIVE_OUT)
	$(CC) $(NATIVE_CFLAGS) native/test-hash.c $(NATIVE_LIB) $(NATIVE_LDFLAGS) -o $@

# Prints the shim's grammar decision for argv vectors (differential test against cli/elevation/grammar.ts).
$(NATIVE_OUT)/test-grammar: native/test-grammar.c $(NATIVE_LIB) $(NATIVE_HDR)
	@mkdir -p $(NATIVE_OUT)
	$(CC) $(NATIVE_CFLAGS) native/test-grammar.c $(NATIVE_LIB) $(NATIVE_LDFLAGS) -o $@

# C unit tests of escaping, UTF-8, the grammar and the verdict parser under ASan/UBSan.
$(NATIVE_OUT)/test-unit: native/test-unit.c $(NATIVE_LIB) $(NATIVE_HDR)
	@mkdir -p $(NATIVE_OUT)
	$(CC) $(NATIVE_WARN) $(NATIVE_SAN) native/test-unit.c $(NATIVE_LIB) -o $@

native-test: $(NATIVE_OUT)/test-unit
	$(NATIVE_OUT)/test-unit

# libFuzzer over argv handling and the verdict parser, bounded by FUZZ_TIME seconds (needs clang).
$(NATIVE_OUT)/fuzz-shim: native/fuzz/fuzz-shim.c $(NATIVE_LIB) $(NATIVE_HDR)
	@mkdir -p $(NATIVE_OUT)
	clang $(NATIVE_WARN) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  native/fuzz/fuzz-shim.c $(NATIVE_LIB) -o $@

native-fuzz: $(NATIVE_OUT)/fuzz-shim
	@mkdir -p $(NATIVE_OUT)/fuzz-corpus
	$(NATIVE_OUT)/fuzz-shim -max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
	  -artifact_prefix=$(NATIVE_OUT)/ $(NATIVE_OUT)/fuzz-corpus native/fuzz/corpus

# `make install` as root: the shim setuid root, the executable it trusts, the verifier user and the
# root-only directories. With DESTDIR (packaging) the _apes user and ownership are left to the package.
install: build native
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/libexec/apes
	install -m 0755 -o root -g root dist/apes $(DESTDIR)$(APES_EXEC_PATH).new
	mv -f $(DESTDIR)$(APES_EXEC_PATH).new $(DESTDIR)$(APES_EXEC_PATH)
	install -m 4755 -o root -g root $(NATIVE_OUT)/apes-shim $(DESTDIR)$(PREFIX)/bin/apes.new
	mv -f $(DESTDIR)$(PREFIX)/bin/apes.new $(DESTDIR)$(PREFIX)/bin/apes
	# The executable learns SYSCONFDIR/LOCALSTATEDIR from this root-owned file next to it (never from argv
	# or the environment), so `sudo apes trust` writes the policy the shim reads.
	printf '{"prefix":"%s","sysconfdir":"%s","localstatedir":"%s"}\n' '$(PREFIX)' '$(SYSCONFDIR)' '$(LOCALSTATEDIR)' \
	  > $(DESTDIR)$(PREFIX)/libexec/apes/paths.json.new
	chmod 0644 $(DESTDIR)$(PREFIX)/libexec/apes/paths.json.new
	mv -f $(DESTDIR)$(PREFIX)/libexec/apes/paths.json.new $(DESTDIR)$(PREFIX)/libexec/apes/paths.json
	install -d -m 0755 -o root -g root $(DESTDIR)$(SYSCONFDIR)/apes
	install -d -m 0700 -o root -g root $(DESTDIR)$(LOCALSTATEDIR)/log/apes
	# Root-only per-user slot files: at most one early (idle) verifier per user (docs/elevation.md).
	install -d -m 0700 -o root -g root $(DESTDIR)$(LOCALSTATEDIR)/lib/apes
	@if [ -n "$(DESTDIR)" ]; then \
	  echo "note: DESTDIR set: create the _apes system user and chown $(LOCALSTATEDIR)/cache/apes to it at package install"; \
	  install -d -m 0700 $(DESTDIR)$(LOCALSTATEDIR)/cache/apes; \
	else \
	  getent passwd _apes >/dev/null || useradd --system --user-group --no-create-home \
	    --shell /usr/sbin/nologin --home-dir $(LOCALSTATEDIR)/cache/apes _apes || getent passwd _apes >/dev/null; \
	  install -d -m 0700 -o _apes -g _apes $(LOCALSTATEDIR)/cache/apes; \
	fi

# Removes the programs; the policy, the audit log, the cache and the _apes user stay (say so).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/apes $(DESTDIR)$(APES_EXEC_PATH) $(DESTDIR)$(PREFIX)/libexec/apes/paths.json
	-rmdir $(DESTDIR)$(PREFIX)/libexec/apes 2>/dev/null
	@echo "kept: $(SYSCONFDIR)/apes (policy), $(LOCALSTATEDIR)/log/apes (audit), $(LOCALSTATEDIR)/cache/apes, user _apes"

# ---- demo (scripts/demo.sh) ----------------------------------------------------------------------
# As root: build, install into a throw-away prefix, start a TLS IdP on 127.0.0.1, have an agent run
# `apes --reason demo -- id -u` as a demo user, approve it as a human, show `0`; cleans up after itself.
.PHONY: demo
demo: build
	bash scripts/demo.sh

# As root: the Nest (scripts/demo-nest.sh): IdP, troop and `apes daemon run` as _apes-nest; alice
# spawns an agent through the troop, approves its grants, it runs as its own user and identity.
.PHONY: demo-nest
demo-nest: build
	bash scripts/demo-nest.sh

# As root: `apes -- /bin/true` through the shim (reused timed grant) against `sudo -n true`, with the
# split between requester, verifier and shim (bench/elevate/run.ts; installs sudo with apt if missing).
.PHONY: bench-elevate
bench-elevate: build
	node bench/elevate/run.ts

# As root: intent submit -> ack at the Nest -> agent started, socket vs 1 s poll (bench/nest/run.ts).
.PHONY: bench-nest
bench-nest: build
	node bench/nest/run.ts

# As root: approval -> a waiting `apes -- cmd` (the shim) runs the command, CLI and browser approvals.
.PHONY: bench-push
bench-push: build
	node bench/push/run.ts

# ---- the IdP as a systemd service (packaging/systemd/) -------------------------------------------
# `sudo make install install-idp-service`: the unit runs $(APES_EXEC_PATH) (what `make install` puts
# there) as the system user _apes-idp on $(LOCALSTATEDIR)/lib/apes-idp. Never enables or starts it.
SYSTEMD_UNITDIR ?= $(PREFIX)/lib/systemd/system
IDP_DATA_DIR := $(LOCALSTATEDIR)/lib/apes-idp
IDP_UNIT := $(DESTDIR)$(SYSTEMD_UNITDIR)/apes-idp.service

.PHONY: install-idp-service uninstall-idp-service
install-idp-service:
	install -d -m 0755 $(DESTDIR)$(SYSTEMD_UNITDIR)
	sed -e 's|@EXEC@|$(APES_EXEC_PATH)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	  -e 's|@LOCALSTATEDIR@|$(LOCALSTATEDIR)|g' packaging/systemd/apes-idp.service.in > $(IDP_UNIT).new
	chmod 0644 $(IDP_UNIT).new
	mv -f $(IDP_UNIT).new $(IDP_UNIT)
	@if [ -n "$(DESTDIR)" ]; then \
	  echo "note: DESTDIR set: create the _apes-idp system user and chown $(IDP_DATA_DIR) to it at package install"; \
	  install -d -m 0700 $(DESTDIR)$(IDP_DATA_DIR); \
	else \
	  getent passwd _apes-idp >/dev/null || useradd --system --user-group --no-create-home \
	    --shell /usr/sbin/nologin --home-dir /nonexistent _apes-idp || getent passwd _apes-idp >/dev/null; \
	  install -d -m 0700 -o _apes-idp -g _apes-idp $(IDP_DATA_DIR); \
	fi
	@echo "installed $(SYSTEMD_UNITDIR)/apes-idp.service (settings: $(SYSCONFDIR)/apes/idp.env, data: $(IDP_DATA_DIR))"
	@echo "start it with: systemctl daemon-reload && systemctl enable --now apes-idp"

# Removes the unit; the data directory (users, keys, grants) and the _apes-idp user stay.
uninstall-idp-service:
	rm -f $(IDP_UNIT)
	@echo "kept: $(IDP_DATA_DIR) (IdP data), $(SYSCONFDIR)/apes/idp.env, user _apes-idp"
	@echo "stop it first if it runs: systemctl disable --now apes-idp && systemctl daemon-reload"

# ---- the resident verifier as a systemd service (optional; packaging/systemd/) --------------------
# `sudo make install install-verifier-service`: `apes verifier serve` as _apes on the cache directory
# `make install` made; the shim then hands elevations to it (docs/elevation.md section 3). Never
# enables or starts it.
VERIFIER_UNIT := $(DESTDIR)$(SYSTEMD_UNITDIR)/apes-verifier.service

.PHONY: install-verifier-service uninstall-verifier-service
install-verifier-service:
	install -d -m 0755 $(DESTDIR)$(SYSTEMD_UNITDIR)
	sed -e 's|@EXEC@|$(APES_EXEC_PATH)|g' -e 's|@LOCALSTATEDIR@|$(LOCALSTATEDIR)|g' \
	  packaging/systemd/apes-verifier.service.in > $(VERIFIER_UNIT).new
	chmod 0644 $(VERIFIER_UNIT).new
	mv -f $(VERIFIER_UNIT).new $(VERIFIER_UNIT)
	@echo "installed $(SYSTEMD_UNITDIR)/apes-verifier.service"
	@echo "start it with: systemctl daemon-reload && systemctl enable --now apes-verifier"

uninstall-verifier-service:
	rm -f $(VERIFIER_UNIT)
	@echo "stop it first if it runs: systemctl disable --now apes-verifier && systemctl daemon-reload"

# ---- man pages, shell completions and the Debian package (packaging/) ----------------------------
# `make docs`: man pages and bash/zsh/fish completions generated from the command definitions
# (scripts/gen-docs.ts) into build/docs. `make deb` (as root, or under fakeroot): apes_$(VERSION)_amd64.deb
# in build/deb, offline with dpkg-deb, from `make install` staged with DESTDIR (scripts/deb.sh).
VERSION ?= $(shell node -p 'require("./package.json").version')
DOCS_OUT ?= build/docs
DEB_OUT ?= build/deb

.PHONY: docs deb
docs: $(NODE_STAMP)
	node scripts/gen-docs.ts $(DOCS_OUT)

deb: build
	VERSION='$(VERSION)' DEB_OUT='$(DEB_OUT)' bash scripts/deb.sh
