# qscope - build, test, check, bench, install.
# Flags come from pkg-config; warnings are errors and each layer sees only the headers it may use.

PREFIX  ?= /usr/local
BUILD   ?= build
CC      ?= cc
# Each layer is compiled with the include paths of what it may use and no
# more (DESIGN.md, "Folders and their rules"), so a wrong include fails the
# build: kernels/ sees libc only, engine/ adds BLAS, jansson and PCRE2, lua/
# adds Lua, tui/ and the tests see everything.
ENGINE_PKGS := openblas lapacke jansson libpcre2-8
LUA_PKGS    := $(ENGINE_PKGS) lua5.4
PKGS        := $(LUA_PKGS) ncursesw readline
ENGINE_CFLAGS := $(shell pkg-config --cflags $(ENGINE_PKGS) 2>/dev/null)
LUA_CFLAGS    := $(shell pkg-config --cflags $(LUA_PKGS) 2>/dev/null)
PKG_CFLAGS    := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS      := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

# Warnings are errors in every build, so the test command (make test) fails
# on a new warning; `make WERROR=` relaxes it for an unfamiliar compiler.
WERROR  ?= -Werror
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wvla $(WERROR)
OPT     ?= -O2 -g
# The include paths of the file's layer (set per folder below).
LAYER_CFLAGS = $(PKG_CFLAGS)
# CFLAGS/LDFLAGS from the command line are appended, never replace ours.
ALL_CFLAGS  = $(OPT) -std=c11 -D_GNU_SOURCE $(WARN) -fopenmp $(LAYER_CFLAGS) $(EXTRA_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = -fopenmp $(EXTRA_LDFLAGS) $(LDFLAGS)
LDLIBS  += $(PKG_LIBS) -lm

KERNEL_SRC := $(wildcard kernels/*.c)
ENGINE_SRC := $(wildcard engine/*.c)
LUA_SRC    := $(wildcard lua/*.c)
TUI_SRC    := $(wildcard tui/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_HELP  := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))

LIB_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(KERNEL_SRC) $(ENGINE_SRC) $(LUA_SRC))
TUI_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(TUI_SRC))
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
HELP_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(TEST_HELP))
LIB      := $(BUILD)/libqscope.a
BIN      := $(BUILD)/qscope

.PHONY: all test check asan bench quality quality-spread clean install run deps layering
all: $(BIN) qscope

qscope: $(BIN)
	@ln -sf $(BIN) qscope

# scripts/forbidden holds stand-ins for the headers a layer may not use, each
# an #error, found before the system's copies (curses.h and readline/ sit in
# /usr/include, where removing an -I path alone would not hide them).
NO_UI  := -Iscripts/forbidden/ui
NO_LUA := -Iscripts/forbidden
$(BUILD)/kernels/%.o: LAYER_CFLAGS = $(NO_UI) $(NO_LUA)
$(BUILD)/engine/%.o: LAYER_CFLAGS = $(NO_UI) $(NO_LUA) $(ENGINE_CFLAGS)
$(BUILD)/lua/%.o: LAYER_CFLAGS = $(NO_UI) $(LUA_CFLAGS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(TUI_OBJ) $(LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $(TUI_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(HELP_OBJ) $(LIB) $(BIN)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -o $@ $< $(HELP_OBJ) $(LIB) $(ALL_LDFLAGS) $(LDLIBS) $(CMOCKA_LIBS)

# The suite: every tests/test_*.c, run from the project root, after the
# layering check; the runner fails on a skipped test (outside make asan).
export QSCOPE_ASAN
test: layering $(BIN) $(TEST_BIN)
	@QSCOPE_BIN=$(abspath $(BIN)) scripts/run-tests.sh $(TEST_BIN)

# The compiler enforces the layers (LAYER_CFLAGS); this grep names the file
# when a header is reachable anyway (e.g. under /usr/include directly).
layering:
	@bad=$$(grep -lE '#[[:space:]]*include[[:space:]]*[<"](n?curses|readline/|lua|lauxlib|lualib)' \
		engine/*.[ch] kernels/*.[ch] 2>/dev/null); \
	if [ -n "$$bad" ]; then echo "layering: UI/Lua headers in engine/ or kernels/: $$bad"; exit 1; fi; \
	echo "layering: ok"

# make test already builds with -Werror and checks the layering; check is
# the same suite in a separate build folder (kept for habit and scripts).
check:
	$(MAKE) BUILD=build-check test

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
		EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
		EXTRA_LDFLAGS="-fsanitize=address,undefined" QSCOPE_ASAN=1 test

bench: all
	scripts/bench.sh

quality: all
	scripts/quality.sh

quality-spread: all
	scripts/quality_spread.sh

deps:
	scripts/deps.sh

run: deps
	$(MAKE) all
	./qscope ppl -m models/debdoc-19m-f16.gguf -f data/wikitext-2-test.txt

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/qscope

clean:
	rm -rf build build-check build-asan qscope

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
