# Shortcuts; the scripts are the source of truth (README, .ci/run).
.PHONY: demo test lint bench

demo:            ## the whole pipeline on the embedded broker, live view
	bash scripts/demo.sh

test:            ## install, start Kafka and Redis, lint, type-check, run every test
	bash scripts/test.sh

lint:            ## ruff and mypy only
	.venv/bin/ruff check . && .venv/bin/mypy

bench:           ## consume and pipeline benchmarks (needs KAFKA_BOOTSTRAP_SERVERS, REDIS_URL)
	.venv/bin/python benchmarks/bench_consume.py
	.venv/bin/python benchmarks/bench_pipeline.py
