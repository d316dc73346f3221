"""The fetchfleet Python API: fetch pages in one call, or submit a batch and stream its results.

With FETCHFLEET_REDIS_URL set it uses that cluster (run `fetchfleet worker` somewhere); without it,
`afetch` starts a private local cluster for the call (the `Client` part then needs a cluster):
    python examples/api_example.py https://example.org/ https://example.com/
"""

import asyncio
import sys

import fetchfleet


async def main(urls: list[str]) -> None:
    # One call: every page, in input order.
    for page in await fetchfleet.afetch(urls, body=True, ordered=True):
        print(page.index, page.status, page.url, page.error.kind.value if page.error else len(page.text()))

    async with fetchfleet.Client() as client:  # settings from FETCHFLEET_* variables
        batch_id = await client.submit(urls, body=True)
        async for result in client.results(batch_id, follow=True):  # as they complete
            print(result.index, result.ok, result.cursor)  # pass cursor= to resume from here
        status = await client.status(batch_id)
        print(f"batch {batch_id}: {status.done}/{status.submitted} done, {status.failed} failed")

        unwanted = await client.submit(urls)
        status = await client.cancel(unwanted)  # no new fetch of it starts anywhere
        print(f"batch {unwanted}: {status.state.value}")


asyncio.run(main(sys.argv[1:]))
