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
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from kexue import params as project_params
from kexue import registry, serve, tracking
from kexue.errors import KexueError


def registered_name(model: str) -> str:
    """The name params.yaml registers `model` by (`<model>.registered_name` of the project
    the command runs in; `kexue-<model>` outside one), so a project that renames its models
    still finds them."""
    name = f"kexue-{model}"
    path = tracking.project_root() / "params.yaml"
    loaded = project_params.load(path) if path.is_file() else {}
    if isinstance(loaded.get(model), dict):
        name = project_params.block(loaded, model).get("registered_name", name)
    return name


def champion(model: str) -> str:
    """The champion's URI under the name params.yaml registers `model` by."""
    return registry.champion_uri(registered_name(model))


def _load(model_uri: str):
    mlflow = tracking.connect()
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as err:
        raise KexueError(
            f"cannot load model {model_uri}: {err.message.splitlines()[0]} "
            "(run `dvc repro` first, or pass --model PATH_OR_URI)"
        ) from None


def _texts(args: argparse.Namespace) -> list[str]:
    if args.text:
        return args.text
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def segment(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    model = _load(args.model or champion("crf"))
    for words in model.predict(pd.DataFrame({"text": texts}))["words"]:
        print(" ".join(words))


def title(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    model = _load(args.model or champion("title"))
    params = {} if args.beam_width is None else {"beam_width": args.beam_width}
    for generated in _predict(model, pd.DataFrame({"text": texts}), params)["title"]:
        print(generated)


def _predict(model, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
    try:
        return model.predict(frame, params=params)
    except Exception as err:  # the pyfunc's 400s (MlflowException) and schema errors alike
        raise KexueError(" ".join(str(err).split())[:300]) from None


def similar(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    model = _load(args.model or champion("similarity"))
    params = {} if args.top is None else {"top_k": args.top}
    found = _predict(model, pd.DataFrame({"query": texts}), params)
    for i, (text, phrases, scores) in enumerate(
        zip(texts, found["ranked"], found["scores"], strict=True)
    ):
        if len(texts) > 1:  # several queries: a blank line and a header before each
            print(f"\n# {text}" if i else f"# {text}")
        for phrase, score in zip(phrases, scores, strict=True):
            print(f"{phrase}\t{score:.4f}")


def sentiment(args: argparse.Namespace) -> None:
    texts = _texts(args)
    if not texts:
        return
    model = _load(args.model or champion("attention"))
    labels = model.model_config["labels"]
    found = _predict(model, pd.DataFrame({"text": texts}), {})
    if len(labels) == 2:  # one column: the second label's probability
        for probability in found[labels[1]]:
            print(f"{probability:.4f}\t{labels[1] if probability >= 0.5 else labels[0]}")
        return
    for label, probability in zip(found.idxmax(axis=1), found.max(axis=1), strict=True):
        print(f"{probability:.4f}\t{label}")


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
    model = _load(args.model or champion("ode"))
    start = {name: value for name, value in (("x1", args.x1), ("x2", args.x2)) if value is not None}
    print("t\tx1\tx2")
    for row in _predict(model, pd.DataFrame({"t": times}), start).itertuples(index=False):
        print(f"{row.t:g}\t{row.x1:.4f}\t{row.x2:.4f}")


def _read_images(paths: list[str]) -> list[bytes]:
    images = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                images.append(file.read())
        except OSError as err:
            raise KexueError(f"{path}: cannot read the image ({err.strerror})") from None
    return images


def _predict_images(args: argparse.Namespace, model_name: str, params: dict):
    """(paths, predictions) of the image files named on the command line or stdin."""
    paths = _texts(args)
    if not paths:
        return [], None
    images = _read_images(paths)
    model = _load(args.model or champion(model_name))
    return paths, _predict(model, pd.DataFrame({"image": images}), params)


def classify(args: argparse.Namespace) -> None:
    params = {} if args.top is None else {"top_k": args.top}
    paths, found = _predict_images(args, "dogs", params)
    if not paths:
        return
    for path, classes, probabilities in zip(
        paths, found["classes"], found["probabilities"], strict=True
    ):
        ranked = ",".join(f"{c}:{p:.4f}" for c, p in zip(classes, probabilities, strict=True))
        print(f"{path}\t{classes[0]}\t{probabilities[0]:.4f}\t{ranked}")


def digits(args: argparse.Namespace) -> None:
    paths, found = _predict_images(args, "capsule", {})
    if not paths:
        return
    for path, label, top2 in zip(paths, found["label"], found["top2_labels"], strict=True):
        print(f"{path}\t{label}\t{top2[0]},{top2[1]}")


def poem(args: argparse.Namespace) -> None:
    convert = _simplifier() if args.simplified else None  # before loading: fail fast
    request = {"count": [args.n]}
    for name in ("temperature", "seed"):
        if getattr(args, name) is not None:
            request[name] = [getattr(args, name)]
    model = _load(args.model or champion("poet"))
    for couplet in _predict(model, pd.DataFrame(request), {})["poems"][0]:
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
    poems.add_argument("--model", help=f"model URI or folder (default: {champion('poet')})")
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
    return parser


def _add_verb(verbs, run, help: str, action: str, model_name: str):
    """A verb that runs a registered model on texts from the command line or stdin."""
    verb = verbs.add_parser(run.__name__, help=help)
    verb.add_argument("text", nargs="*", help=f"texts to {action}; read from stdin when absent")
    verb.add_argument(
        "--model",
        help=f"model URI or folder (default: {champion(model_name)})",
    )
    verb.set_defaults(run=run)
    return verb


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
