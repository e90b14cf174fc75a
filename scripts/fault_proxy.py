#!/usr/bin/env python3
"""A TCP proxy on loopback whose behaviour a file switches (for scripts/blackhole).

    fault_proxy.py LISTEN_PORT UPSTREAM_PORT CONTROL_FILE

CONTROL_FILE holds one word, read every 20 ms:
  pass       bytes go through
  blackhole  connections stay open, bytes are held (delivered when it ends)
  refuse     nothing listens (connections refused) and open ones are closed
"""
import asyncio
import sys

LISTEN, UPSTREAM, CONTROL = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mode = "pass"
changed = asyncio.Event()
conns = set()


def read_mode():
    try:
        with open(CONTROL) as f:
            return f.read().strip() or "pass"
    except OSError:
        return "pass"


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while mode == "blackhole":
                await changed.wait()
            if mode == "refuse":
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", UPSTREAM)
    except OSError:
        client_writer.close()
        return
    pair = (client_writer, up_writer)
    conns.add(pair)
    await asyncio.gather(pump(client_reader, up_writer), pump(up_reader, client_writer))
    conns.discard(pair)


async def main():
    global mode, changed
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    while True:
        await asyncio.sleep(0.02)
        new = read_mode()
        if new == mode:
            continue
        mode = new
        changed.set()
        changed = asyncio.Event()
        if mode == "refuse" and server is not None:
            server.close()
            server = None
            for pair in list(conns):
                for w in pair:
                    w.close()
        elif mode != "refuse" and server is None:
            server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)


asyncio.run(main())
