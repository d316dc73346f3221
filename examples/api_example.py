"""The fetchfleet Python API: submit a batch, stream its results, read its status, cancel a batch.

Run it where a cluster runs (FETCHFLEET_REDIS_URL, and `fetchfleet worker` somewhere):
    python examples/api_example.py https://example.org/ https://example.com/
"""

from __future__ import annotations

import asyncio
import json
import sys

from producer import Client


async def main(urls: list[str]) -> None:
    async with Client() as client:  # settings from FETCHFLEET_* variables
        batch_id = await client.submit(urls)
        async for _cursor, document in client.results(batch_id, follow=True):
            result = json.loads(document)
            print(result["index"], result["status"], result["url"], result["error"])
        status = await client.status(batch_id)
        print(f"batch {batch_id}: {status.done}/{status.submitted} done, {status.failed} failed")

        unwanted = await client.submit(urls)
        status = await client.cancel(unwanted)  # no new fetch of it starts anywhere
        print(f"batch {unwanted}: {status.state.value}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
