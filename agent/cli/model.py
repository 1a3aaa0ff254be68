"""``meshlet model add|rm|ls|status|load|unload``: the registry, over ModelMesh's
management API and the KServe v2 repository extension."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.cli.args import SIZE_HELP, add_command, add_group, size_type
from agent.cli.client import Client, add_address_argument
from agent.cli.errors import CliError, UsageError
from agent.cli.progress import Progress
from agent.cli.render import (
    human_bytes,
    model_status_lines,
    plural,
    vmodel_status_lines,
    write_index,
)
from agent.cli.specs import FieldError, checked_spec, load_model_file, model_info, parse_label
from agent.proto import grpc_service_pb2 as pb
from agent.proto import meshlet_pb2 as meshlet_pb
from agent.proto import model_mesh_pb2 as mm
from agent.registry.spec import RUNTIMES, ModelSpec

DEFAULT_CONCURRENCY = 64
MAX_FAILURES_LISTED = 50


def add_parser(subparsers: Any) -> None:
    commands = add_group(
        subparsers, "model", "register, list, inspect and remove models",
        "Manage the models a meshlet knows: register them (one, or many from a YAML\n"
        "file), list them, show their status, load, unload and remove them.",
        "  meshlet model add my-model --uri /models/my-model --type sklearn\n"
        "  meshlet model ls\n"
        "  meshlet model status my-model",
    )
    _add_add(commands)

    rm = add_command(
        commands, "rm", "unregister a model",
        "Unregister a model: unload its copies and forget it.",
        "  meshlet model rm my-model",
    )
    rm.add_argument("id", metavar="ID", help="model id")
    add_address_argument(rm)
    rm.set_defaults(run=remove)

    ls = add_command(
        commands, "ls", "list registered models",
        "List every registered model as an ID / STATE / REASON table (from the\n"
        "KServe v2 RepositoryIndex), sorted by id with numbers compared as numbers\n"
        "(m-2 before m-10), then a count by state. STATE is ModelMesh's, as in\n"
        "'model status': NOT_LOADED (registered, loads on first use), LOADING,\n"
        "LOADED or LOADING_FAILED (REASON says why).",
        "  meshlet model ls\n"
        "  meshlet model ls --ready\n"
        "  meshlet model ls -q | head",
    )
    ls.add_argument("--ready", action="store_true",
                    help="only models that are loaded and ready (default: all)")
    ls.add_argument("-q", "--quiet", action="store_true",
                    help="print model ids only, no header or count")
    add_address_argument(ls)
    ls.set_defaults(run=list_models)

    status = add_command(
        commands, "status", "show a model's state, copies and errors",
        "Show a model's state, its loaded copies (where, since when) and load\n"
        "errors. If ID is a vmodel, show where it points (active and target\n"
        "model) and their states too. Exits 1 if ID is neither.",
        "  meshlet model status simple-string-3",
    )
    status.add_argument("id", metavar="ID", help="model or vmodel id")
    add_address_argument(status)
    status.set_defaults(run=show_status)

    load = add_command(
        commands, "load", "load a model now and wait until it is ready",
        "Load a registered model now (ModelMesh ensureLoaded, sync) instead of on\n"
        "its first request, and print its status. Exits 1 if the load fails.",
        "  meshlet model load simple-string-3",
    )
    load.add_argument("id", metavar="ID", help="model id")
    add_address_argument(load)
    load.set_defaults(run=load_model)

    unload = add_command(
        commands, "unload", "unload a model, keeping it registered",
        "Unload a model's copies (KServe v2 RepositoryModelUnload). It stays\n"
        "registered and loads again on its next request.",
        "  meshlet model unload simple-string-3",
    )
    unload.add_argument("id", metavar="ID", help="model or vmodel id")
    add_address_argument(unload)
    unload.set_defaults(run=unload_model)


def _add_add(commands: Any) -> None:
    add = add_command(
        commands, "add", "register a model, or many from a YAML file",
        "Register a model (ModelMesh registerModel) and print its status.\n"
        "Registering again with the same spec changes nothing; a new spec replaces\n"
        "the old one (and unloads it).\n\n"
        "With --file, register every model of a YAML file: a list of entries, or a\n"
        "mapping {models: [...]}; each entry has id, uri, type and optionally\n"
        "runtime, size_hint (bytes or e.g. 64Mi) and labels (a mapping). The whole\n"
        "file is checked first; if any entry is invalid nothing is sent (exit 2).\n"
        "Then up to --concurrency registrations are in flight at once, with a\n"
        "progress line on stderr. Exits 1 if any registration failed.\n\n"
        "With --prefetch the agent also pulls each model's artifact into its node\n"
        "cache (without loading it), so the first request only unpacks it. A\n"
        "builtin:// model has nothing to fetch; it counts as neither fetched nor\n"
        "failed.",
        "  meshlet model add my-model --uri /models/my-model --type sklearn --label team=a\n"
        "  meshlet model add ss-x --uri builtin://simple-string --type simple-string --load\n"
        "  meshlet model add big --uri s3://models/big/ --type sklearn --storage-key minio "
        "--prefetch\n"
        "  meshlet model add --file models.yaml --concurrency 128\n\n"
        "models.yaml:\n"
        "  models:\n"
        "    - id: my-model\n"
        "      uri: /models/my-model\n"
        "      type: sklearn\n"
        "      size_hint: 64Mi\n"
        "      labels: {team: a}",
    )
    add.add_argument("id", metavar="ID", nargs="?", help="model id (not with --file)")
    add.add_argument("--uri", help="where the model's files are: file://..., an absolute "
                                   "path, http(s)://..., s3://bucket/key (a file or a "
                                   "prefix), or builtin://...")
    add.add_argument("--type", dest="model_type", metavar="TYPE",
                     help="model type, e.g. sklearn or simple-string")
    add.add_argument("--runtime", choices=sorted(RUNTIMES),
                     help="runtime that serves it (default: mlserver)")
    add.add_argument("--size-hint", type=size_type, default=0, metavar="SIZE",
                     help=f"expected memory size until measured: {SIZE_HELP} "
                          "(default: 0, the runtime predicts)")
    add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     type=_label_type, help="a label; repeat for more (default: none)")
    add.add_argument("--storage-key", default="", metavar="KEY",
                     help="s3: the storage-config key with the credentials (default: the "
                          "key whose bucket matches, else 'default' / 'default_s3')")
    add.add_argument("--gpu", action="store_true",
                     help="place it on a GPU: the one with the most free memory (triton)")
    add.add_argument("--prefetch", action="store_true",
                     help="pull the artifact into the node cache now, without loading it")
    add.add_argument("--load", action="store_true",
                     help="load it now and wait until it is ready (default: on first use)")
    add.add_argument("--file", metavar="YAML",
                     help="register every model in this YAML file ('-' reads stdin)")
    add.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                     metavar="N", help="with --file: registrations in flight at once "
                                       f"(default: {DEFAULT_CONCURRENCY})")
    add_address_argument(add)
    add.set_defaults(run=add_models)


def _label_type(text: str) -> tuple[str, str]:
    try:
        return parse_label(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


# --- add ----------------------------------------------------------------------


async def add_models(args: argparse.Namespace) -> int:
    if args.file is not None:
        given = [flag for flag, value in (
            ("ID", args.id), ("--uri", args.uri), ("--type", args.model_type),
            ("--runtime", args.runtime), ("--size-hint", args.size_hint),
            ("--label", args.label), ("--storage-key", args.storage_key), ("--gpu", args.gpu),
        ) if value]
        if given:
            raise UsageError(f"--file takes the models from the file; drop {', '.join(given)}")
        specs = load_model_file(args.file)
        return await register_file(
            args.address, specs, args.concurrency, args.load, args.prefetch
        )
    missing = [flag for flag, value in (
        ("ID", args.id), ("--uri", args.uri), ("--type", args.model_type)) if not value]
    if missing:
        raise UsageError(f"model add needs {', '.join(missing)} (or --file)")
    try:
        spec = checked_spec(args.id, args.uri, args.model_type, args.runtime or "mlserver",
                            args.size_hint, dict(args.label), args.storage_key, args.gpu)
    except FieldError as err:
        raise UsageError(f"{err.field}: {err.message}" if err.field else err.message) from None
    fetch = args.prefetch and not spec.is_builtin
    async with Client(args.address) as client:
        info = await client.mmesh.registerModel(_register_request(spec, args.load))
        cached = await _prefetch(client, spec.model_id) if fetch else None
    print("\n".join(model_status_lines(spec.model_id, info)))
    if cached is not None:
        how = "already cached" if cached.already_cached else "pulled"
        print(f"cache:   {how}, {plural(cached.size_bytes, 'byte')} "
              f"({cached.compressed_bytes} compressed), sha256 {cached.digest}")
    elif args.prefetch:
        print("cache:   nothing to fetch (builtin)")
    return 1 if info.status == mm.ModelStatusInfo.LOADING_FAILED else 0


async def _prefetch(client: Client, model_id: str) -> meshlet_pb.PrefetchResponse:
    response: meshlet_pb.PrefetchResponse = await client.cache.Prefetch(
        meshlet_pb.PrefetchRequest(model_id=model_id)
    )
    return response


def _register_request(spec: ModelSpec, load: bool) -> mm.RegisterModelRequest:
    return mm.RegisterModelRequest(
        modelId=spec.model_id, modelInfo=model_info(spec), loadNow=load, sync=load
    )


@dataclass
class Tally:
    """What a bulk registration did, for its summary. A builtin model has
    nothing to prefetch: it counts as neither fetched nor failed."""

    registered: int = 0
    failed: int = 0  # the agent refused the registration
    load_failed: int = 0  # registered, but the load (--load) failed
    fetched: int = 0  # --prefetch: pulled, or found cached
    fetch_failed: int = 0
    nothing_to_fetch: int = 0  # --prefetch of a builtin model
    failures: list[tuple[str, str]] = field(default_factory=list)  # (model id, why)

    def summary(self, load: bool, prefetch: bool) -> list[str]:
        """``registered 3 models (0 failed)``, then a line each for --load and
        --prefetch."""
        lines = [f"registered {plural(self.registered, 'model')} ({self.failed} failed)"]
        if load:
            loaded = self.registered - self.load_failed
            lines.append(f"loaded {plural(loaded, 'model')} ({self.load_failed} failed)")
        if prefetch:
            line = f"prefetched {plural(self.fetched, 'model')} ({self.fetch_failed} failed)"
            if self.nothing_to_fetch:
                line += (f"; nothing to fetch for "
                         f"{plural(self.nothing_to_fetch, 'builtin model')}")
            lines.append(line)
        return lines


async def register_file(
    address: str, specs: Sequence[ModelSpec], concurrency: int, load: bool,
    prefetch: bool = False,
) -> int:
    """Register ``specs`` with bounded concurrency; report, list failures, exit 1 on any."""
    progress = Progress(len(specs), sys.stderr, "registering")
    tally = Tally()
    async with Client(address) as client:
        try:
            await register_many(client, specs, concurrency, load, progress, tally, prefetch)
        finally:
            progress.close()
    for model_id, why in tally.failures[:MAX_FAILURES_LISTED]:
        print(f"failed: {model_id}: {why}", file=sys.stderr)
    if len(tally.failures) > MAX_FAILURES_LISTED:
        more = len(tally.failures) - MAX_FAILURES_LISTED
        print(f"... and {plural(more, 'more failure')}", file=sys.stderr)
    print("\n".join(tally.summary(load, prefetch)))
    return 1 if tally.failures else 0


async def register_many(
    client: Client,
    specs: Sequence[ModelSpec],
    concurrency: int,
    load: bool,
    progress: Progress,
    tally: Tally,
    prefetch: bool = False,
) -> None:
    """``concurrency`` workers take specs from one iterator, so a million specs
    never become a million tasks. Stops early if the agent cannot be reached."""
    pending = iter(specs)
    unreachable: list[grpc.aio.AioRpcError] = []

    async def worker() -> None:
        for spec in pending:
            if unreachable:
                return
            try:
                await one(spec)
            except grpc.aio.AioRpcError as err:
                if not client.unreachable(err):
                    raise
                unreachable.append(err)
                return
            progress.advance()

    async def one(spec: ModelSpec) -> None:
        try:
            info = await client.mmesh.registerModel(_register_request(spec, load))
        except grpc.aio.AioRpcError as err:
            if client.unreachable(err):
                raise
            tally.failed += 1
            tally.failures.append((spec.model_id, client.describe(err)))
            return
        tally.registered += 1
        if info.status == mm.ModelStatusInfo.LOADING_FAILED:
            tally.load_failed += 1
            tally.failures.append((spec.model_id, "load failed: " + "; ".join(info.errors)))
        if not prefetch:
            return
        if spec.is_builtin:
            tally.nothing_to_fetch += 1
            return
        try:
            await _prefetch(client, spec.model_id)
        except grpc.aio.AioRpcError as err:
            if client.unreachable(err):
                raise
            tally.fetch_failed += 1
            tally.failures.append((spec.model_id, "prefetch failed: " + client.describe(err)))
            return
        tally.fetched += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    if unreachable:
        done = progress.count
        raise CliError(f"{client.describe(unreachable[0])}; {done} of "
                       f"{plural(len(specs), 'model')} done before that")


# --- the rest -----------------------------------------------------------------


async def remove(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        await client.mmesh.unregisterModel(mm.UnregisterModelRequest(modelId=args.id))
    print(f"unregistered {args.id}")
    return 0


async def list_models(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        index = await client.inference.RepositoryIndex(pb.RepositoryIndexRequest(ready=args.ready))
    write_index(index.models, sys.stdout, ids_only=args.quiet)
    return 0


async def show_status(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        info = await client.mmesh.getModelStatus(mm.GetStatusRequest(modelId=args.id))
        vinfo = await client.mmesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=args.id))
        is_model = info.status != mm.ModelStatusInfo.NOT_FOUND
        size = await _model_size(client, args.id) if is_model else None
    is_vmodel = vinfo.status != mm.VModelStatusInfo.NOT_FOUND
    if not (is_model or is_vmodel):
        raise CliError(f"NOT_FOUND: {args.id!r} is neither a registered model nor a vmodel")
    lines = model_status_lines(args.id, info) if is_model else []
    if size is not None:
        lines.append(size_line(size))
    if is_vmodel:
        lines += vmodel_status_lines(args.id, vinfo)
    print("\n".join(lines))
    return 0


async def _model_size(client: Client, model_id: str) -> meshlet_pb.ModelSizeResponse | None:
    try:
        response: meshlet_pb.ModelSizeResponse = await client.node.ModelSize(
            meshlet_pb.ModelSizeRequest(model_id=model_id)
        )
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
            return None  # an older agent, or unregistered meanwhile
        raise
    return response


def size_line(size: meshlet_pb.ModelSizeResponse) -> str:
    """``size:    3.2 KiB measured (predicted 16.0 KiB, 0.20x)`` and the like."""
    if size.loaded:
        text = f"size:    {human_bytes(size.size_bytes)}"
        if size.predicted_bytes:
            ratio = size.size_bytes / size.predicted_bytes
            text += f" (predicted {human_bytes(size.predicted_bytes)}, {ratio:.2f}x)"
        return text
    if size.measured_bytes:
        return f"size:    {human_bytes(size.measured_bytes)} when last measured (not loaded)"
    return "size:    not measured yet"


async def load_model(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        info = await client.mmesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=args.id, sync=True))
    if info.status == mm.ModelStatusInfo.NOT_FOUND:
        raise CliError(f"NOT_FOUND: model {args.id!r} is not registered")
    print("\n".join(model_status_lines(args.id, info)))
    return 1 if info.status == mm.ModelStatusInfo.LOADING_FAILED else 0


async def unload_model(args: argparse.Namespace) -> int:
    async with Client(args.address) as client:
        await client.inference.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=args.id)
        )
    print(f"unloaded {args.id}")
    return 0
