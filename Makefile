# Targets mirror the original service's npm scripts (build, start, start:dev, docker:build/up/logs/down),
# plus the test, lint and format commands. Settings come from the environment and .env, as for `serve`.

PYTHON ?= python
PORT ?= 3200
IMAGE ?= openai-proxy
COMPOSE ?= docker compose
CODE := openai_proxy tests compat_tests examples bench
CL100K := 9b5ad71b2ce5302211f9c61530b329a4922fc6a4

.PHONY: build start start-dev docker-build docker-up docker-logs docker-down test lint format tiktoken-cache

build:  ## a wheel in dist/ (npm run build)
	$(PYTHON) -m pip wheel --no-deps --wheel-dir dist .

start:  ## the gateway (npm run start:prod); openai-proxy serve --workers N for several processes
	openai-proxy serve

start-dev:  ## reload on code changes (npm run start:dev)
	$(PYTHON) -m uvicorn openai_proxy.asgi:create_app --factory --reload --reload-dir openai_proxy --port $(PORT)

docker-build:  ## the image (npm run docker:build); offline: make tiktoken-cache first
	docker build -t $(IMAGE) .

docker-up:  ## gateway + Redis + two devnodes (npm run docker:up); needs JWT_SECRET
	$(COMPOSE) up -d --build

docker-logs:  ## follow the gateway's JSON logs (npm run docker:logs)
	$(COMPOSE) logs -f gateway

docker-down:  ## stop and remove the stack (npm run docker:down)
	$(COMPOSE) down

test:  ## the test suite, as the README and CI run it
	$(PYTHON) -m pytest -q

lint:  ## ruff and mypy --strict, as CI runs them
	ruff check $(CODE)
	mypy

format:  ## ruff format
	ruff format $(CODE)

tiktoken-cache:  ## copy the cl100k_base tables from TIKTOKEN_CACHE_DIR into the image's build context
	cp "$${TIKTOKEN_CACHE_DIR:?set TIKTOKEN_CACHE_DIR to a folder holding $(CL100K)}/$(CL100K)" docker/tiktoken-cache/
