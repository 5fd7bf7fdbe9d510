"""Serving: one HTTP server for every task, with dynamic batching and a browser playground.

``taskzoo.serve(zoo)`` (or ``taskzoo serve TASK --model M``) runs it with uvicorn; ``create_app(zoo)`` gives
the ASGI app itself. The web stack (FastAPI, uvicorn) comes with the ``serve`` extra and is imported only
when a server is made, so ``import taskzoo`` stays light. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(zoo, host: str = "127.0.0.1", port: int = 8000, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
          batch_size: int | None = None, api_key: str | None = None, timeout_s: float = 300.0,
          max_body_mb: float = 32.0, max_image_pixels: int = 40_000_000, max_audio_seconds: float = 600.0,
          log_level: str = "info") -> None:
    """Serve a loaded task over HTTP until SIGTERM or Ctrl-C, which stop accepting connections, finish the
    requests in flight and return (see docs/serving.md).

    Args:
        zoo: A loaded task, or a function that loads one: then the server listens at once and answers 503
            (``/health``: ``{"status": "loading"}``) until the model has loaded.
        host: The address to listen on; one other than the loopback wants an ``api_key``.
        port: The port to listen on.
        max_batch_size: Concurrent requests are gathered into one batch of up to this many inputs.
        max_wait_ms: How long a request waits for company (not at all after a batch that had none).
        batch_size: Inputs per forward pass, in batches of similar lengths; None: the task's default.
        api_key: Requests to /predict and /info without it (``Authorization: Bearer KEY`` or
            ``X-API-Key: KEY``) are answered 401; None: the environment variable ``TASKZOO_API_KEY``, if set.
        timeout_s: Requests that take longer are answered 504.
        max_body_mb: Request bodies larger than this are refused (413).
        max_image_pixels: Images with more pixels (width x height) are refused (413).
        max_audio_seconds: Longer audio is refused (413).
        log_level: uvicorn's log level (``"info"``: a line per request).

    Raises:
        ImportError: The web stack is not installed (``pip install "taskzoo[serve]"``).
        Exception: A ``zoo`` function that fails stops the server, and its error is raised.
    """
    uvicorn = web_stack()
    from taskzoo.serving.app import LoadingApp, create_app
    from taskzoo.serving.codec import Limits

    api_key = api_key or os.environ.get("TASKZOO_API_KEY") or None
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_image_pixels=max_image_pixels,
                    max_audio_seconds=max_audio_seconds, timeout_s=timeout_s)

    def make_app(task):
        return create_app(task, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, batch_size=batch_size,
                          api_key=api_key, limits=limits)
    app = make_app(zoo) if hasattr(zoo, "predict") else LoadingApp(zoo, make_app)
    if host not in LOOPBACK and not api_key:
        logging.getLogger("taskzoo.serve").warning(
            "Serving on %s without an API key: anyone who can reach this address can use the model.", host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=None))  # in-flight requests finish
    if isinstance(app, LoadingApp):
        app.start(on_failure=lambda: setattr(server, "should_exit", True))
    run(server)
    if isinstance(app, LoadingApp) and app.error is not None:
        raise app.error


def run(server) -> None:
    """``server.run()``, from the main thread with SIGTERM and Ctrl-C as graceful stops."""
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again to the handler that was there
    # before it, so that the process ends as if killed. A no-op handler there makes a graceful stop exit 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def web_stack():
    """uvicorn, once FastAPI is known to be there too; a missing ``serve`` extra is named."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise ImportError(f"taskzoo serve needs the web stack ({error.name} is missing): "
                          "pip install 'taskzoo[serve]'.") from error
    return uvicorn


# ------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``taskzoo serve`` sub-command's arguments (cli.py adds the sub-command)."""
    parser.add_argument("task", help="the task to serve: a task name or alias, e.g. text-classification "
                        "(taskzoo tasks lists them)")
    parser.add_argument("--model", metavar="PATH", help="local folder, packaged model (all-MiniLM-L6-v2) or hub id; "
                        "default: the task's pinned default (see taskzoo tasks)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="inputs in one predict call at most")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others "
                        "to share its predict call (only after a batch that had company)")
    parser.add_argument("--batch-size", type=int, help="predict's batch size within one call (default: the task's)")
    parser.add_argument("--api-key", help="require this key (better: set TASKZOO_API_KEY, which `ps` won't show)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take at most")
    parser.add_argument("--max-body-mb", type=float, default=32.0)
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000)
    parser.add_argument("--max-audio-seconds", type=float, default=600.0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="uvicorn's; info logs every request")
    parser.set_defaults(run=run_command)


def run_command(args) -> None:
    import taskzoo
    from taskzoo.serving.codec import Limits

    # Bad settings, and a missing web stack, are refused before the model loads, which may take a while.
    web_stack()
    Limits(max_body_bytes=args.max_body_mb * 2**20, max_image_pixels=args.max_image_pixels,
           max_audio_seconds=args.max_audio_seconds, timeout_s=args.timeout)
    if args.max_batch_size < 1 or args.max_wait_ms < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise ValueError(f"--max-batch-size and --batch-size must be at least 1 and --max-wait-ms at least 0; got "
                         f"{args.max_batch_size}, {args.batch_size} and {args.max_wait_ms}.")
    if args.device is not None:  # only then: checking imports torch, which takes seconds before the server listens
        from taskzoo.accelerators import check_device

        check_device(args.device)
    # The server listens while the model loads (/health answers 503 until it is ready).
    serve(lambda: taskzoo.load(args.task, args.model, device=args.device), args.host, args.port,
          max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
          batch_size=args.batch_size, api_key=args.api_key, timeout_s=args.timeout, max_body_mb=args.max_body_mb,
          max_image_pixels=args.max_image_pixels, max_audio_seconds=args.max_audio_seconds, log_level=args.log_level)


def create_app(zoo, **options):
    """The ASGI app for ``zoo`` (see :func:`taskzoo.serving.app.create_app`)."""
    from taskzoo.serving.app import create_app as create

    return create(zoo, **options)
