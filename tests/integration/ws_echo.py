"""A WebSocket echo server for the tests (the ``websockets`` library, mounted from the
test environment): answers every message with "<name>: <message>"."""

import asyncio
import os

from websockets.asyncio.server import ServerConnection, serve

NAME = os.environ.get("ECHO_NAME", "ws")


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        text = message.decode() if isinstance(message, bytes) else message
        await connection.send(f"{NAME}: {text}")


async def main() -> None:
    # No keepalive pings: an idle connection must stay idle for the test to mean anything.
    async with serve(echo, "0.0.0.0", 8000, ping_interval=None):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main())
