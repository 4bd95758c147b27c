"""`kexue`: use the registered models from a terminal.

kexue segment "今天天气不错"          # words, from the registry's champion
echo "今天天气不错" | kexue segment   # one text per input line
kexue title "床前明月光，疑是地上霜。"   # a title for each text (seq2seq, beam search)
kexue similar "人类" --top 5          # the known phrases nearest in meaning, with cosines
kexue sentiment "质量很好，推荐"        # probability that a review is positive, and the label
kexue ode 10 20 40 --x1 120           # both populations at these times (the fitted "ode")
kexue digits seven.png pair.png       # the digit in each image, and the two best classes
kexue classify photo.jpg --top 3      # each image's best classes and probabilities (fine-tuned CNN)
kexue poem -n 5 --temperature 0.8     # five new couplets (CNN + VAE), traditional characters
kexue repro --jobs 2                  # dvc repro, the model branches two at a time
kexue serve                           # every champion over HTTP, and a page to try them
kexue daemon status                   # the background server the verbs above answer from

The model verbs ask a background `kexue serve` on a socket of this user's (started on first
use, it exits after params.yaml `daemon.idle_seconds`), so only the first call loads a model;
--no-daemon (or KEXUE_DAEMON=0) answers in this process instead. docs/cli.md
"""

from __future__ import annotations

import argparse
import base64
import sys

from kexue import daemon, invoke, serve
from kexue.errors import KexueError


def registered_name(model: str) -> str:
    """The name params.yaml registers `model` by (`<model>.registered_name` of the project
    the command runs in; `kexue-<model>` outside one), so a project that renames its models
    still finds them."""
    from kexue import params as project_params
    from kexue import tracking

    name = f"kexue-{model}"
    path = tracking.project_root() / "params.yaml"
    loaded = project_params.load(path) if path.is_file() else {}
    if isinstance(loaded.get(model), dict):
        name = project_params.block(loaded, model).get("registered_name", name)
    return name


def champion(model: str) -> str:
    """The champion's URI under the name params.yaml registers `model` by."""
    from kexue import registry

    return registry.champion_uri(registered_name(model))


def _ask(args: argparse.Namespace, request: dict) -> dict:
    """The answer to a model call (`kexue.invoke`) from the daemon, or from this process."""
    request["source"] = args.model
    if args.no_daemon or not daemon.wanted():
        return invoke.run(request)
    return daemon.ask(request)


def _texts(args: argparse.Namespace) -> list[str]:
    if args.text:
        return args.text
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def segment(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    for row in _ask(args, invoke.call("crf", {"text": texts}))["records"]:
        print(" ".join(row["words"]))


def title(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    params = {} if args.beam_width is None else {"beam_width": args.beam_width}
    for row in _ask(args, invoke.call("title", {"text": texts}, params))["records"]:
        print(row["title"])


def similar(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    params = {} if args.top is None else {"top_k": args.top}
    found = _ask(args, invoke.call("similarity", {"query": texts}, params))["records"]
    for i, (text, row) in enumerate(zip(texts, found, strict=True)):
        if len(texts) > 1:  # several queries: a blank line and a header before each
            print(f"\n# {text}" if i else f"# {text}")
        for phrase, score in zip(row["ranked"], row["scores"], strict=True):
            print(f"{phrase}\t{score:.4f}")


def sentiment(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    found = _ask(args, invoke.call("attention", {"text": texts}, config=["labels"]))
    labels = found["config"]["labels"]
    for row in found["records"]:
        if len(labels) == 2:  # one column: the second label's probability
            probability = row[labels[1]]
            print(f"{probability:.4f}\t{labels[1] if probability >= 0.5 else labels[0]}")
        else:  # a column per label: the likeliest (the first of equals)
            label = max(row, key=row.get)
            print(f"{row[label]:.4f}\t{label}")


def ode(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    times = []
    for text in texts:
        try:
            times.append(float(text))
        except ValueError:
            raise KexueError(f"a time must be a number, got {text!r}") from None
    start = {name: value for name, value in (("x1", args.x1), ("x2", args.x2)) if value is not None}
    found = _ask(args, invoke.call("ode", {"t": times}, start))["records"]
    print("t\tx1\tx2")
    for row in found:
        print(f"{row['t']:g}\t{row['x1']:.4f}\t{row['x2']:.4f}")


def _read_images(paths: list[str]) -> list[str]:
    """Each file's bytes, base64 (a call is JSON)."""
    images = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                images.append(base64.b64encode(file.read()).decode("ascii"))
        except OSError as err:
            raise KexueError(f"{path}: cannot read the image ({err.strerror})") from None
    return images


def _predict_images(args: argparse.Namespace, model_name: str, params: dict):
    """(paths, prediction records) of the image files named on the command line or stdin."""
    paths = _texts(args)
    if not paths:
        return [], []
    request = invoke.call(model_name, {"image": _read_images(paths)}, params, binary=["image"])
    return paths, _ask(args, request)["records"]


def classify(args: argparse.Namespace) -> None:
    params = {} if args.top is None else {"top_k": args.top}
    paths, found = _predict_images(args, "dogs", params)
    if not paths:
        return
    for path, row in zip(paths, found, strict=True):
        classes, probabilities = row["classes"], row["probabilities"]
        ranked = ",".join(f"{c}:{p:.4f}" for c, p in zip(classes, probabilities, strict=True))
        print(f"{path}\t{classes[0]}\t{probabilities[0]:.4f}\t{ranked}")


def digits(args: argparse.Namespace) -> None:
    paths, found = _predict_images(args, "capsule", {})
    if not paths:
        return
    for path, row in zip(paths, found, strict=True):
        top2 = row["top2_labels"]
        print(f"{path}\t{row['label']}\t{top2[0]},{top2[1]}")


def poem(args: argparse.Namespace) -> None:
    convert = _simplifier() if args.simplified else None  # before loading: fail fast
    request = {"count": [args.n]}
    for name in ("temperature", "seed"):
        if getattr(args, name) is not None:
            request[name] = [getattr(args, name)]
    for couplet in _ask(args, invoke.call("poet", request))["records"][0]["poems"]:
        print(convert(couplet) if convert else couplet)


def _simplifier():
    """Traditional -> simplified characters with OpenCC (an optional extra)."""
    try:
        import opencc
    except ImportError:
        raise KexueError(
            "--simplified needs OpenCC: pip install 'kexue[simplified]' (or opencc)"
        ) from None
    return opencc.OpenCC("t2s").convert


def repro(args: argparse.Namespace) -> None:
    from kexue import parallel_repro

    jobs = parallel_repro.cores() if args.jobs is None else args.jobs
    parallel_repro.repro(jobs, args.targets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kexue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_verb(verbs, segment, "cut Chinese text into words (CNN + CRF)", "segment", "crf")
    tit = _add_verb(
        verbs, title, "write a title for a text (seq2seq + beam search)", "title", "title"
    )
    tit.add_argument("--beam-width", type=int, help="beams to keep (default: the model's)")
    sim = _add_verb(
        verbs,
        similar,
        "known phrases nearest in meaning (GRU + AM-Softmax)",
        "look up",
        "similarity",
    )
    sim.add_argument("--top", type=int, help="phrases to print (default: the model's top_k)")
    _add_verb(
        verbs,
        sentiment,
        "is a review positive? (self-attention; a model of more labels: the likeliest one)",
        "classify",
        "attention",
    )
    populations = _add_verb(
        verbs,
        ode,
        "both species' populations at ascending times (RNN as ODE solver)",
        "solve at",
        "ode",
    )
    for species in ("x1", "x2"):
        populations.add_argument(
            f"--{species}",
            type=float,
            help=f"{species} at the first observation (default: observed)",
        )
    _add_verb(verbs, digits, "which digit is in each image (capsule network)", "read", "capsule")
    images = _add_verb(
        verbs, classify, "the best classes of each image (fine-tuned CNN)", "classify", "dogs"
    )
    images.add_argument("--top", type=int, help="classes to print (default: the model's top_k)")
    poems = verbs.add_parser(poem.__name__, help="new couplets from random codes (CNN + VAE)")
    poems.add_argument("-n", type=int, default=1, help="how many couplets (default: 1)")
    poems.add_argument(
        "--temperature",
        type=float,
        help="above 0; 1 samples the model as trained, toward 0 its most likely characters "
        "(default: the model's)",
    )
    poems.add_argument("--seed", type=int, help="the same seed gives the same couplets")
    poems.add_argument(
        "--simplified", action="store_true", help="show simplified characters (needs OpenCC)"
    )
    _add_model_options(poems, "poet")
    poems.set_defaults(run=poem)
    pipeline = verbs.add_parser(
        repro.__name__,
        help="dvc repro with the model branches side by side (docs/parallel.md)",
    )
    pipeline.add_argument("--jobs", "-j", type=int, help="branches at a time (default: one a core)")
    pipeline.add_argument(
        "targets", nargs="*", help="stages to build (default: every branch of dvc.yaml)"
    )
    pipeline.set_defaults(run=repro)
    serve.add_verb(verbs)
    daemon.add_verb(verbs)
    return parser


def _add_verb(verbs, run, help: str, action: str, model_name: str):
    """A verb that runs a registered model on texts from the command line or stdin."""
    verb = verbs.add_parser(run.__name__, help=help)
    verb.add_argument("text", nargs="*", help=f"texts to {action}; read from stdin when absent")
    _add_model_options(verb, model_name)
    verb.set_defaults(run=run)
    return verb


def _add_model_options(verb, model_name: str) -> None:
    # The help does not read params.yaml: the daemon's client starts without a YAML parser.
    verb.add_argument(
        "--model",
        help="model URI or folder (default: the registry's champion of params.yaml's "
        f"{model_name}.registered_name, else kexue-{model_name})",
    )
    verb.add_argument(
        "--no-daemon", action="store_true", help="load the model in this process (seconds)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KexueError as err:
        print(f"kexue: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
