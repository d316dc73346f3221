"""fetchfleet's client side: the Python API and the `fetchfleet` command line.

async with Client() as client:
    batch_id = await client.submit(["https://example.org/"])
    async for _cursor, document in client.results(batch_id, follow=True):
        ...
"""

from producer.client import BatchStatus, Client

__all__ = ["BatchStatus", "Client"]
