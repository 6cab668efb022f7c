"""The mfetch agent: serves a directory read-only over HTTP byte ranges and
keeps the tracker told what it holds.

    config      AgentConfig and its layering (defaults < YAML < AGENT_* < flags)
    hashcache   content identities, hashed in worker processes, cached in SQLite
    inventory   the scanned directory, its diffs, what the agent holds
    server      the aiohttp app (/files, /pieces, /healthz)
    tracker_link the gRPC tracker behind the small TrackerApi interface
    reporter    register / announce / heartbeat, with backoff while unreachable
    app         start(): wires them together, returns a RunningAgent
    cli         `agent serve DIR ...`
"""
