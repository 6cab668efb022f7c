"""`mfetch --background`: hand a fetch to the local agent instead of running it here.

The agent (``agent serve DIR``) fetches into its DIR and shares the file once
done; see agent/fetch_page.py for its API. The default agent is
http://127.0.0.1:7070 (the agent's default port on this machine); --agent,
``agent:`` in the config file or $MFETCH_AGENT name another.
"""
from __future__ import annotations

import asyncio
import json
import ssl

from client import wire
from client.http import check_url, describe
from common.errors import ConfigError, SourceError


async def hand_over(agent: str, targets: list[str], sha256: str | None,
                    timeout: float = 10.0, token: str | None = None) -> dict[str, object]:
    """POST the fetch to `agent`; returns the agent's view of it (with its "id").
    `token`, the agents' HTTP token, goes with it (an agent with one wants it from
    any client but loopback).

    Raises ConfigError for a bad agent URL or a fetch the agent refuses,
    SourceError when no agent answers.
    """
    agent = agent.rstrip("/")
    check_url(agent)
    body = {"targets": targets, "sha256": sha256}
    client = wire.WireClient(connect_timeout=timeout, read_timeout=timeout, tls=_tls)
    headers = [("Content-Type", "application/json")]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    try:
        async with asyncio.timeout(timeout):
            r = await client.request("POST", f"{agent}/api/fetches", headers,
                                     json.dumps(body).encode())
            async with r:
                text = (await r.read()).decode("utf-8", "replace")
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if r.status == 201 and isinstance(answer, dict) and "id" in answer:
            return answer
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise ConfigError(f"the agent at {agent} refused the fetch: "
                          f"{reason or f'{r.status} {r.reason}'}")
    except (TimeoutError, OSError) as e:
        raise SourceError(f"no agent answers at {agent} ({describe(e)}); start one with "
                          "`agent serve DIR`, or name it with --agent URL") from None
    except ValueError as e:
        raise ConfigError(f"--agent {agent}: {e}") from None
    finally:
        await client.close()


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx
