#!/usr/bin/env bash
# Stream a chat completion with curl and print the raw server-sent events, ending with `data: [DONE]`.
#
#   export OPENAI_BASE_URL=http://127.0.0.1:3200/v1
#   export OPENAI_API_KEY=<JWT>
#   bash examples/curl_stream.sh
set -euo pipefail

BASE_URL="${OPENAI_BASE_URL:-http://127.0.0.1:3200/v1}"
MODEL="${OPENAI_MODEL:-meta-llama/Llama-3.1-8B-Instruct}"
: "${OPENAI_API_KEY:?set OPENAI_API_KEY to a gateway token (JWT)}"

# -N: no buffering, so events print as they arrive; --fail-with-body: HTTP errors exit non-zero (and show why).
curl -sS -N --fail-with-body "${BASE_URL%/}/chat/completions" \
  -H "Authorization: Bearer ${OPENAI_API_KEY}" \
  -H "Content-Type: application/json" \
  -d "{\"model\": \"${MODEL}\", \"stream\": true, \"max_tokens\": 20,
       \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}"
