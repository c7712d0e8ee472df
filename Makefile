# The two commands of README.md:
#   make demo   set everything up, run the job end to end on MovieLens, show live rankings
#   make test   the whole test suite (unit + real Kafka broker + real Flink MiniCluster)
DATA ?= ../shared/data/ml-latest-small
DEMO_LIMIT ?=
DEMO_RATE ?=
PYTEST_ARGS ?=
SR := .venv/bin/streamrank

.PHONY: install demo test unit clean

install:
	@scripts/install.sh

demo: install
	@$(SR) demo --data "$(DATA)" $(if $(DEMO_LIMIT),--limit $(DEMO_LIMIT),) $(if $(DEMO_RATE),--rate $(DEMO_RATE),)

test: install
	@scripts/install-test-tools.sh
	.venv/bin/python -m pytest $(PYTEST_ARGS)

unit: install
	.venv/bin/python -m pytest -m unit $(PYTEST_ARGS)

clean:
	-@$(SR) kafka down 2>/dev/null
	rm -rf .run
