"""A scripted AMI peer on loopback: the byte-stream seam for client and adapter fault tests.

It logs a client in as Asterisk does, then does what each test tells it: cut the link
mid-message, send garbage or a 1 MB line, ignore pings, refuse the login, leave an action
unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

from cti.ami import Message, MessageReader

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
SECRET = "s3cr3t-do-not-log"


class Peer:
    """One accepted connection: read actions, write bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._parser = MessageReader(expect_banner=False)
        self._actions: list[Message] = []
        self.seen: list[Message] = []

    async def action(self) -> Message:
        while not self._actions:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("client closed")
            self._actions += [m for m in self._parser.feed(data) if isinstance(m, Message)]
        action = self._actions.pop(0)
        self.seen.append(action)
        return action

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def reply(self, action: Message, text: str) -> None:
        """``Response: Success`` unless ``text`` starts with its own first line; ActionID second."""
        if not text.startswith("Response:"):
            text = "Response: Success\r\n" + text
        first, _, rest = text.partition("\r\n")
        aid = action.action_id
        lines = [first] + ([f"ActionID: {aid}"] if aid else []) + ([rest] if rest else [])
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def login(self, secret: str = SECRET) -> bool:
        """Answer Challenge/Login as Asterisk does; False if the credentials were wrong."""
        challenge = "840213547"
        while True:
            action = await self.action()
            if action.name == "Challenge":
                self.reply(action, f"Challenge: {challenge}")
                continue
            assert action.name == "Login"
            if action.get("AuthType", "").lower() == "md5":
                ok = action.get("Key") == hashlib.md5((challenge + secret).encode()).hexdigest()
            else:
                ok = action.get("Secret") == secret
            if ok:
                self.reply(action, "Message: Authentication accepted")
                self.send(b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n")
            else:
                self.reply(action, "Response: Error\r\nMessage: Authentication failed")
            await self.writer.drain()
            return ok


Handler = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def peer_server(handler: Handler) -> AsyncIterator[tuple[int, list[Peer]]]:
    peers: list[Peer] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        peers.append(peer)
        writer.write(BANNER)
        with contextlib.suppress(ConnectionError):
            await handler(peer)
        writer.close()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], peers
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
