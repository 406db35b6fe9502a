"""`maskpipe` command line: synth | index | train | infer | evaluate | export | serve | data upload.

Each subcommand parses its flags and calls one plain function; heavy imports are deferred so
`maskpipe --help` is instant. Errors that are the user's to fix print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from maskpipe import __version__
from maskpipe.cli_args import OneLineParser, height_by_width, model_name, number, port, whole_number


class UserError(Exception):
    """Bad input the user can fix: printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="maskpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"maskpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic data set in the competition layout")
    p.add_argument("out", type=Path)
    p.add_argument("--people", type=int, default=60)
    p.add_argument("--eval-people", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=height_by_width, default=(384, 512), metavar="HEIGHTxWIDTH", help="photo size (default 512x384)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("index", help="index a data root (local folder or s3://bucket/prefix)")
    p.add_argument("data_root")
    p.add_argument("-o", "--out", type=Path, required=True, help="index.parquet to write")
    p.add_argument("--report", type=Path, help="report.json to write")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--corrections",
        help="label corrections: 'known' (the widely reported fixes) or a CSV/YAML file",
    )
    p.add_argument(
        "--skip-bad-profiles",
        action="store_true",
        help="skip (and report) profile folders whose names do not parse or disagree with train.csv",
    )
    p.add_argument("--cache-dir", type=Path, help="local cache for s3:// data")
    p.add_argument("--workers", type=int, help="parallel decode checks (default: CPU count)")
    _html_arg(p, "OUT with .report.html for .parquet, e.g. index.report.html")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("train", help="train one task model")
    p.add_argument("--task", required=True, choices=["mask", "gender", "age"])
    p.add_argument("--index", required=True, help="index.parquet: a path, or s3://bucket/key/index.parquet")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (resumed if present)")
    _config_args(p)
    p.add_argument("--resume-uri", help="s3://bucket/key/ where resume state is mirrored")
    p.add_argument("--cache-dir", type=Path, help="local cache for s3:// data")
    _html_arg(p, "OUT/report.html")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("infer", help="three checkpoints (or an exported model) + eval data -> submission.csv")
    _task_checkpoint_args(p, required=False)
    p.add_argument("--model", type=Path, help="a folder `maskpipe export` wrote (instead of the three)")
    p.add_argument(
        "--backend", choices=["auto", "onnx", "torch"], default="auto",
        help="onnx (ONNX Runtime, CPU; needs --model) or torch; auto (default): with --model onnx, "
        "or torch where CUDA is available; without it torch",
    )
    p.add_argument("--data", required=True, help="data root with eval/info.csv and eval/images/")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--tta", action="store_true", help="horizontal-flip test-time augmentation")
    p.add_argument("--probs", type=Path, help="write per-task probabilities (parquet)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cache-dir", type=Path, help="local cache for s3:// data")
    p.add_argument(
        "--truth",
        type=Path,
        help="true classes of the eval images (ImageID,ans) for the report's scores "
        "(default: DATA/eval_truth.csv when it exists)",
    )
    _html_arg(p, "OUT with .report.html for .csv, e.g. submission.report.html")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("export", help="three checkpoints -> one ONNX graph + model card (the served model)")
    _task_checkpoint_args(p, required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="leave flip TTA out of the graph")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--quantize", choices=["int8"],
        help="also write model.int8.onnx (static int8, ONNX Runtime) and run it; model.onnx stays "
        "as the fp32 reference (needs --calibration)",
    )
    p.add_argument(
        "--calibration", type=Path,
        help="photos to calibrate --quantize with: a data root (its train/images) or a folder of images",
    )
    p.add_argument(
        "--calibration-images", type=int, default=128,
        help="photos that calibrate; as many more, held out, measure int8 against fp32 (default 128)",
    )
    p.set_defaults(func=_cmd_export)

    # Its flags are KServe's and maskpipe's (serve_parser): parsed by that parser alone, which
    # imports kserve; this entry only lists the command, so `maskpipe --help` stays instant.
    p = sub.add_parser("serve", add_help=False, help="serve an exported model over HTTP (KServe v1 and v2 protocols)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("evaluate", help="score submission.csv against a truth CSV")
    p.add_argument("submission", type=Path)
    p.add_argument("truth", type=Path)
    p.add_argument("--json", type=Path, help="write the scores as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("data", help="move data sets in and out of MinIO")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("upload", help="upload a local data set to s3://bucket/prefix")
    q.add_argument("local_dir", type=Path)
    q.add_argument("uri")
    q.add_argument("--workers", type=int, default=8)
    q.set_defaults(func=_cmd_upload)
    return parser


def _task_checkpoint_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    for task in ("mask", "gender", "age"):
        p.add_argument(f"--{task}", type=Path, required=required, help=f"{task} checkpoint folder")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help="default | original | smoke")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 --set model.arch=efficientnet_b0",
    )


def _html_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--html", type=Path, help=f"HTML report to write (default: {default})")


def _beside(out: Path, explicit: Path | None) -> Path:
    """The report path: ``--html``, else ``out`` with ``.report.html`` for its suffix."""
    return explicit if explicit is not None else out.with_name(f"{out.stem}.report.html")


def _cmd_synth(args: argparse.Namespace) -> None:
    from maskpipe.data.synth import generate

    summary = generate(
        args.out, people=args.people, eval_people=args.eval_people, seed=args.seed, size=args.size
    )
    print(summary)


def _cmd_index(args: argparse.Namespace) -> None:
    from maskpipe.data.index import build_index

    result = build_index(
        args.data_root,
        args.out,
        report_path=args.report,
        val_fraction=args.val_fraction,
        seed=args.seed,
        corrections=args.corrections,
        skip_bad_profiles=args.skip_bad_profiles,
        cache_dir=args.cache_dir,
        workers=args.workers,
    )
    print(result.summary())
    from maskpipe.reports import write_index_report

    html = write_index_report(result.train, result.report, _beside(args.out, args.html), cache_dir=args.cache_dir)
    print(f"report: {html}")


def _cmd_train(args: argparse.Namespace) -> None:
    from maskpipe.config import load_config
    from maskpipe.train import train_task

    config = load_config(args.preset, args.overrides)
    result = train_task(
        config,
        args.task,
        _local_index(args.index, args.cache_dir),
        args.out,
        resume_uri=args.resume_uri,
        cache_dir=args.cache_dir,
    )
    from maskpipe.distributed import is_main

    if not is_main():  # under torchrun rank 0 reports (and wrote every file)
        return
    print(result.summary())
    from maskpipe.reports import write_train_report

    html = write_train_report(args.out, args.html or args.out / "report.html", cache_dir=args.cache_dir)
    print(f"report: {html}")


def _local_index(index: str, cache_dir: Path | None) -> Path:
    """``--index`` as a local file: an ``s3://`` one is downloaded into the cache first (what a
    Kubeflow Trainer node, which does not see the step's files, is given)."""
    from maskpipe import storage

    if not storage.is_s3(index):
        return Path(index)
    root, _, name = index.rstrip("/").rpartition("/")
    return storage.localize(root, [name], cache_dir=cache_dir)[0]


def _cmd_infer(args: argparse.Namespace) -> None:
    from maskpipe.ensemble import predict_submission
    from maskpipe.runtime import open_backend

    given = [task for task in ("mask", "gender", "age") if getattr(args, task) is not None]
    if args.model is not None and given:
        raise UserError("give either --model or --mask/--gender/--age, not both")
    if args.model is None and len(given) != 3:
        raise UserError("give --mask, --gender and --age checkpoint folders, or an exported --model folder")
    source = args.model if args.model is not None else {t: getattr(args, t) for t in given}
    # The models first: a wrong or altered folder fails before any image is read.
    backend = open_backend(source, args.backend, device=args.device, tta=args.tta)
    result = predict_submission(
        backend,
        args.data,
        args.out,
        probs_path=args.probs,
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache_dir=args.cache_dir,
    )
    print(result.summary())
    from maskpipe.steps.infer import write_inference_report

    facts = [("TTA", "on" if args.tta else "off"), ("device", result.device)]
    html = write_inference_report(
        result, _beside(args.out, args.html), facts, truth=args.truth, cache_dir=args.cache_dir
    )
    print(f"report: {html}")


def _cmd_export(args: argparse.Namespace) -> None:
    if args.quantize and args.calibration is None:
        raise UserError(
            f"--quantize {args.quantize} needs --calibration PATH: a data root or a folder of photos "
            "like the ones the model will see (half calibrate, half check int8 against fp32)"
        )
    if args.calibration is not None and not args.quantize:
        raise UserError("--calibration is only used with --quantize int8; add it or drop --calibration")
    if args.calibration_images < 1:
        raise UserError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    from maskpipe.export import export_model
    from maskpipe.quantize import find_calibration_images

    # The photos are found before the export's ~20 s, so a wrong path fails at once.
    photos = find_calibration_images(args.calibration) if args.quantize else []
    out = export_model(
        {"mask": args.mask, "gender": args.gender, "age": args.age}, args.out, tta=args.tta, opset=args.opset,
        quantize=args.quantize, calibration_paths=photos, calibration_images=args.calibration_images,
        calibration_source=None if args.calibration is None else str(args.calibration),
    )  # fmt: skip
    if not args.quantize:
        print(f"wrote {out}: model.onnx, model.json and the three checkpoints (serve it with `maskpipe serve {out}`)")
        return
    from maskpipe.model_card import read_model_dir

    measured = read_model_dir(out).data["quantization"]
    print(
        f"wrote {out}: model.int8.onnx (the graph it runs), model.onnx (fp32 reference), model.json "
        f"and the three checkpoints; int8 gives fp32's class on {measured['agreement']['class']:.1%} of "
        f"{measured['check_images']} held-out photos (serve it with `maskpipe serve {out}`)"
    )


def serve_parser() -> argparse.ArgumentParser:
    """`maskpipe serve`'s flags: KServe's own (``kserve.model_server.parser``, as KServe's
    predictors take them) and maskpipe's. ``--port`` and ``--name`` are the older spellings of
    KServe's ``--http_port`` and ``--model_name``, kept for the InferenceServices deployed with
    them.

    Raises:
        UserError: kserve is not installed here.
    """
    try:
        from maskpipe.serve_server import kserve_parser
    except ImportError as exc:
        raise UserError(
            f"maskpipe serve needs the serving environment ({exc}): install it with "
            "`pip install -e '.[serve]'` (`make venv` does), or use the serving image "
            "docker/Dockerfile.serve"
        ) from None
    p = OneLineParser(
        prog="maskpipe serve", parents=[kserve_parser()],
        description="Serve an exported model over HTTP (KServe v1 and v2 protocols). KServe's flags "
        "come first; the options of maskpipe serve follow them.",
    )  # fmt: skip
    # KServe's defaults where maskpipe serve's differ: its model name, and REST only.
    p.set_defaults(model_name="maskpipe", enable_grpc=False)
    p.add_argument("model_dir", type=Path)
    own = p.add_argument_group("maskpipe serve")
    own.add_argument("--port", dest="http_port", type=port, default=argparse.SUPPRESS, help="the same as --http_port")
    own.add_argument("--name", dest="model_name", type=model_name, default=argparse.SUPPRESS, help="the same as --model_name")
    own.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    own.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    own.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch backend only")
    own.add_argument("--max-batch", type=whole_number(1), default=32, help="most images in one request")
    own.add_argument("--max-body-mb", type=number(above=0), default=20.0, help="largest request body")
    own.add_argument("--batch-wait-ms", type=number(at_least=0), default=2.0, help="how long to gather concurrent requests into one batch")
    own.add_argument(
        "--memory-limit-mb", type=number(above=0),
        help="the memory the decoding budgets are sized to (default: the cgroup's memory.max, "
        "else what the deploy step gives the predictor)",
    )  # fmt: skip
    own.add_argument("--request-megapixels", type=number(above=0), default=48.0, help="most decoded pixels in one request")
    own.add_argument(
        "--enable-model-repository", action="store_true",
        help="also answer KServe's /v2/repository load/unload endpoints (off: anyone reaching the port could unload the model)",
    )  # fmt: skip
    own.add_argument(
        "--auth-token-file", type=Path, default=os.environ.get("MASKPIPE_SERVE_AUTH_TOKEN_FILE") or None,
        help="file holding a bearer token every request but the health probes must carry "
        "(default $MASKPIPE_SERVE_AUTH_TOKEN_FILE; none: no token)",
    )  # fmt: skip
    return p


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    """`maskpipe serve`'s flags, with KServe's values checked as maskpipe's are: a bad one exits
    2 with one line (a port out of range, a name no URL can hold, what maskpipe serve does not do)."""
    parser = serve_parser()
    args = parser.parse_args(argv)
    for flag, check in (("--http_port", port), ("--model_name", model_name)):
        try:
            check(str(getattr(args, flag[2:])))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument {flag}: {exc}")
    if args.workers != 1:
        parser.error(
            f"argument --workers: maskpipe serve runs one server process (its batching and decode "
            f"budgets are per process), not {args.workers}: drop --workers, and run more replicas"
        )
    if args.enable_grpc:
        parser.error("argument --enable_grpc: maskpipe serve answers REST (v1 and v2) only: drop --enable_grpc")
    if args.enable_docs_url:
        parser.error(
            "argument --enable_docs_url: maskpipe serve has no Swagger UI; its OpenAPI document is "
            "GET /openapi.json: drop --enable_docs_url"
        )
    return args


def _cmd_serve(args: argparse.Namespace) -> None:
    from maskpipe.serve_limits import ServeLimits

    max_body_bytes = int(args.max_body_mb * 1024 * 1024)
    limits = ServeLimits(
        max_batch=args.max_batch, max_body_bytes=max_body_bytes,
        body_bytes_in_flight=max(ServeLimits.body_bytes_in_flight, max_body_bytes),
        request_pixels=int(args.request_megapixels * 1e6),
        memory_limit_bytes=None if args.memory_limit_mb is None else int(args.memory_limit_mb * 1024 * 1024),
    )  # fmt: skip
    token = _read_token(args.auth_token_file) if args.auth_token_file else None
    from maskpipe.serve import ServeOptions, serve

    options = ServeOptions(
        name=args.model_name, host=args.host, backend=args.backend, device=args.device,
        batch_wait_s=args.batch_wait_ms / 1000, limits=limits,
        enable_model_repository=args.enable_model_repository, auth_token=token,
    )  # fmt: skip
    serve(args.model_dir, options, args)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--auth-token-file {path}: cannot read it ({exc.__class__.__name__}); give a readable text file") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--auth-token-file {path}: the token must be one word of text with no spaces; write only the token in it")
    return token


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from maskpipe.evaluate import evaluate_files, format_scores

    scores = evaluate_files(args.submission, args.truth, json_path=args.json)
    print(format_scores(scores))


def _cmd_upload(args: argparse.Namespace) -> None:
    from maskpipe.storage import upload_dir

    result = upload_dir(args.local_dir, args.uri, workers=args.workers)
    print(result.summary())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from maskpipe.distributed import world_from_env
    from maskpipe.errors import MaskpipeError

    command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    try:
        world = world_from_env()
    except MaskpipeError as exc:
        print(f"maskpipe {command}: error: {exc}", file=sys.stderr)
        return 2
    if world.distributed:
        command = f"{command} ({world.label()})"
    _configure_logging(args.verbose, world)

    try:
        if args.command == "serve":  # its flags are for its own parser (KServe's and maskpipe's)
            args = argparse.Namespace(**vars(args), **vars(parse_serve_args(argv[argv.index("serve") + 1 :])))
        elif unknown:
            parser.parse_args(argv)  # argparse's one line naming the flags it does not know (exit 2)
        args.func(args)
    except (MaskpipeError, UserError) as exc:
        print(f"maskpipe {command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _configure_logging(verbose: bool, world) -> None:
    level, prefix = logging.DEBUG if verbose else logging.INFO, ""
    if world.distributed:
        # Under torchrun: every line names its rank; ranks other than 0 speak only when
        # something is wrong (rank 0 reports the run), and draw no progress bars.
        prefix = f"[rank {world.rank}] "
        if not world.is_main:
            level = logging.DEBUG if verbose else logging.WARNING
            os.environ.setdefault("MASKPIPE_PROGRESS", "off")
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
