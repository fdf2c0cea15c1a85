"""A plain NATS Micro service (nats-py `nats.micro`) for the gateway's raw mode test.

Usage: python3 raw_service.py <nats_url>

Endpoints (service "pyraw"):
  pyraw.echo  -> 200-style reply: JSON {"headers": {...}, "body": "..."} plus reply
                 headers X-Py, Content-Type, and hop-by-hop ones the gateway must drop;
                 X-Response-Status-Code: 201 (narun's legacy status header)
  pyraw.fail  -> respond_error("429", "slow down")
Prints "ready" on stdout once subscribed.
"""
import asyncio
import json
import sys

import nats
import nats.micro


async def main(url: str) -> None:
    nc = await nats.connect(url)
    svc = await nats.micro.add_service(nc, name="pyraw", version="1.0.0", description="raw-mode test service")

    async def echo(req) -> None:
        headers = dict(req.headers or {})
        body = json.dumps({"headers": headers, "body": req.data.decode("utf-8", "replace")}).encode()
        await req.respond(
            data=body,
            headers={
                "X-Py": "yes",
                "Content-Type": "application/json",
                "Connection": "close",
                "Keep-Alive": "timeout=5",
                "X-Response-Status-Code": "201",
            },
        )

    async def fail(req) -> None:
        await req.respond_error("429", "slow down")

    await svc.add_endpoint(name="echo", subject="pyraw.echo", handler=echo)
    await svc.add_endpoint(name="fail", subject="pyraw.fail", handler=fail)
    await nc.flush()
    print("ready", flush=True)
    # Run until the test kills us (or stdin closes).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await svc.stop()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
