"""`kexue serve`: every model's champion behind one HTTP server, and a page to try them.

    kexue serve                                   # params.yaml `serve:`: port, limits, polling
    kexue serve --preload --poll 60               # load all now; follow `champion` every minute
    kexue serve --model crf=models:/kexue-crf/3 --model title=models/title/pyfunc

Routes: GET / (the page), GET /health, GET /models, POST /models/<model>/invocations (what
`mlflow models serve` of that model takes and answers), POST /models/<model>/reload.
"""

from __future__ import annotations

import argparse
import dataclasses

from kexue.errors import KexueError
from kexue.models import MODELS


def settings(args: argparse.Namespace):
    """The `serve` block of the project's params.yaml, with the command line's overrides."""
    from kexue import params as project_params
    from kexue import tracking
    from kexue.serve.app import Settings

    path = tracking.project_root() / "params.yaml"
    values = project_params.parse(
        Settings, project_params.block(project_params.load(path), "serve"), "serve"
    )
    overrides = {"host": args.host, "port": args.port, "poll_seconds": args.poll}
    if args.preload:
        overrides["preload"] = True
    return dataclasses.replace(
        values, **{key: value for key, value in overrides.items() if value is not None}
    )


def sources(pairs: list[str]) -> dict[str, str]:
    """{model: URI or folder} of the `--model MODEL=URI_OR_PATH` options."""
    named = {}
    for pair in pairs:
        model, sep, source = pair.partition("=")
        if not sep or model not in MODELS or not source:
            raise KexueError(
                f"--model {pair}: expected MODEL=URI_OR_PATH, MODEL one of {', '.join(MODELS)}"
            )
        named[model] = source
    return named


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from kexue.serve.app import create_app
    from kexue.serve.slots import make_slots

    config = settings(args)
    app = create_app(make_slots(list(MODELS), sources(args.model)), config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def add_verb(verbs) -> None:
    verb = verbs.add_parser(
        "serve",
        help="serve every model's champion over HTTP, with a page to try them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verb.add_argument("--host", help="address to bind (default: params.yaml serve.host)")
    verb.add_argument("--port", type=int, help="port (default: params.yaml serve.port)")
    verb.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="MODEL=URI_OR_PATH",
        help="serve this version or folder instead of the champion (repeatable)",
    )
    verb.add_argument(
        "--preload", action="store_true", help="load every model now, not on its first request"
    )
    verb.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="follow `champion` every SECONDS (0: only on reload; default: serve.poll_seconds)",
    )
    verb.set_defaults(run=run)
