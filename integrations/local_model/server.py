"""The offline model's server process: llama.cpp's OpenAI app on the socket the supervisor hands over.

Run by the supervisor as `python -m integrations.local_model.server --listen-fd N ...`; it serves
until the bot stops it, and dies with the bot however the bot dies.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Sequence

from integrations.local_model.bundle import LOCAL_ALIAS, LOCAL_CONTEXT_TOKENS, LOCAL_THREADS


def serve(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m integrations.local_model.server")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", default=LOCAL_ALIAS)
    parser.add_argument("--n-ctx", type=int, default=LOCAL_CONTEXT_TOKENS)
    parser.add_argument("--threads", type=int, default=LOCAL_THREADS)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)

    import llama_cpp.llama_cpp as native
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from integrations.local_model.llama_patch import disable_extra_weight_buffers
    from integrations.local_model.middleware import OpenAIConformance

    disable_extra_weight_buffers(native)
    app = create_app(
        # A second request must queue, not cut the first reply short (the server's default).
        server_settings=ServerSettings(interrupt_requests=False),
        model_settings=[
            ModelSettings(
                model=args.model,
                model_alias=args.alias,
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                n_threads_batch=args.threads,
                verbose=False,
            )
        ],
    )
    listener = socket.socket(fileno=args.listen_fd)
    config = uvicorn.Config(OpenAIConformance(app), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the bot dies, however it dies (even SIGKILL).

    Strictly, the signal comes when the thread that started the child ends: asyncio starts it
    from the event loop's thread, which lives as long as the bot.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    # The bot may have died before the request above took effect.
    if os.getppid() != parent_pid:
        sys.exit("the bot that started this server is gone")


if __name__ == "__main__":
    serve(sys.argv[1:])
