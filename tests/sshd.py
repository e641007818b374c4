"""A real SSH + SFTP server on 127.0.0.1 for the team-remote tests (asyncssh, the library
dvc-ssh's client is built on): public-key login only, the host key the test wrote.

    python -m tests.sshd --host-key KEY --authorized KEYS.pub --port-file PORT

It binds a free port, writes it to ``--port-file`` (atomically: a reader sees all of it or
nothing) and serves until it is terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import asyncssh


async def serve(host_key: Path, authorized: Path, port_file: Path) -> None:
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[str(host_key)],
        authorized_client_keys=str(authorized),
        sftp_factory=True,
    )
    port = server.sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, port_file)
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host-key", type=Path, required=True)
    parser.add_argument("--authorized", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host_key, args.authorized, args.port_file))


if __name__ == "__main__":
    main()
