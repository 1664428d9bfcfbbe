# qscope - build, test, check, bench, install.
# Flags come from pkg-config; `make check` adds -Werror and the layering rule.

PREFIX  ?= /usr/local
BUILD   ?= build
CC      ?= cc
PKGS    := openblas lapacke jansson libpcre2-8 lua5.4 ncursesw readline
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wvla
OPT     ?= -O2 -g
# CFLAGS/LDFLAGS from the command line are appended, never replace ours.
ALL_CFLAGS  = $(OPT) -std=c11 -D_GNU_SOURCE $(WARN) -fopenmp $(PKG_CFLAGS) $(EXTRA_CFLAGS) $(CFLAGS)
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

# The suite: every tests/test_*.c, run from the project root.
export QSCOPE_ASAN
test: $(BIN) $(TEST_BIN)
	@QSCOPE_BIN=$(abspath $(BIN)) scripts/run-tests.sh $(TEST_BIN)

layering:
	@bad=$$(grep -lE '#[[:space:]]*include[[:space:]]*[<"](n?curses|readline/|lua|lauxlib|lualib)' \
		engine/*.[ch] kernels/*.[ch] 2>/dev/null); \
	if [ -n "$$bad" ]; then echo "layering: UI/Lua headers in engine/ or kernels/: $$bad"; exit 1; fi; \
	echo "layering: ok"

check:
	$(MAKE) layering
	$(MAKE) BUILD=build-check EXTRA_CFLAGS=-Werror test

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
