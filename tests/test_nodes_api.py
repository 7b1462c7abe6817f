"""GET /api/v1/nodes and /api/v1/nodes/{address}/stats: the original shapes plus routing state, no error bodies."""

from __future__ import annotations

from datetime import datetime

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
ALICE = "0x" + "a1" * 20
BOB = "0x" + "B2" * 20


async def test_nodes_are_listed_with_their_routing_state(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    good = await start_devnode(address=ALICE, model=LLAMA, token_delay=0.001)
    failing = await start_devnode(address=BOB, fault="fail")
    loading = await start_devnode(loading=True)
    gw = await start_gateway([good.url, f"openai+http://{failing.hostport}", f"petals+ws://{loading.hostport}"],
                             node_max_failures=1)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    sent = 0
    while (await failing.counters())["requests"] == 0 and sent < 30:  # until the failing node has been tried
        sent += 1
        assert (await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())).status_code == 200
    response = await http.get(f"{gw.url}/api/v1/nodes")
    assert response.status_code == 200
    listing = response.json()
    assert listing["total"] == 3
    by_url = {node["url"]: node for node in listing["nodes"]}
    ok, bad, slow = by_url[good.url], by_url[failing.url], by_url[loading.url]
    assert (ok["address"], ok["status"], ok["kind"], ok["source"], ok["healthy"]) == (ALICE, "online", "plumise",
                                                                                     "static", True)
    assert ok["models"] == [LLAMA] and ok["inFlight"] == 0 and not ok["coolingDown"]
    assert ok["requests"] == sent and ok["failures"] == 0
    assert ok["medianLatencyMs"] > 0 and ok["tokensPerSecond"] > 0
    datetime.fromisoformat(ok["lastHealthCheck"])
    assert bad["kind"] == "openai" and bad["address"] == BOB.lower()
    assert (bad["failures"], bad["requests"], bad["coolingDown"], bad["status"]) == (1, 1, True, "offline")
    assert (slow["status"], slow["healthy"], slow["kind"]) == ("offline", False, "petals-ws")
    assert "simulated failure" not in response.text and "Traceback" not in response.text


async def test_stats_find_a_node_by_address_in_any_case(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=BOB)
    gw = await start_gateway([node.url])
    for address in (BOB, BOB.lower(), BOB.upper().replace("0X", "0x")):
        body = (await http.get(f"{gw.url}/api/v1/nodes/{address}/stats")).json()
        assert body["found"] is True and body["node"]["address"] == BOB.lower()
        assert body["node"]["url"] == node.url and body["node"]["status"] == "online"
    missing = await http.get(f"{gw.url}/api/v1/nodes/{ALICE}/stats")
    assert missing.status_code == 200
    assert missing.json() == {"found": False, "message": "Node not found or not registered"}
