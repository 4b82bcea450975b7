"""`memagent serve`: the gRPC memory service on one engine.

Data files are owner-only (the process umask is 077); the data directory is locked while the
server runs, so `memagent repair` cannot change it underneath.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_DATA_DIR = Path(os.environ.get("MEMAGENT_DATA_DIR", Path.home() / ".local/share/memagent"))


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the gRPC memory service", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (logged at start)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="memories live here; $MEMAGENT_DATA_DIR sets the default")
    p.add_argument("--model", help="released checkpoint folder or hub id, or random:<shape> (default: embedded model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--quantize", choices=("int8",), help="int8: reads through int8 weights (CPU, faster decode); writes and pools stay float"
    )
    p.add_argument(
        "--max-long-term-tokens",
        type=int,
        help="M+ models: long-term tokens each memory keeps per layer, the least recalled and oldest evicted "
        "first; bounds a read's cost (default: 32768 for the embedded and random models, none for a released "
        "checkpoint, which keeps M+'s own rules; 0: none)",
    )
    p.add_argument(
        "--compile-decode",
        action="store_true",
        help="decode one-row requests in steps compiled by inductor (faster decode, CPU or CUDA), compiled "
        "before the server serves (a minute or two)",
    )
    auth = p.add_mutually_exclusive_group()
    auth.add_argument(
        "--tokens",
        type=Path,
        help='JSON {"tokens": {"<token>": "<tenant>"}}; default DATA_DIR/tokens.json, made with one token on first start',
    )
    auth.add_argument("--no-auth", action="store_true", help="no tokens: every caller is tenant 'default' (local use)")
    p.add_argument(
        "--insecure-no-auth-on-public-address",
        action="store_true",
        help="allow --no-auth on a --host that is not loopback: anyone who can reach it reads every memory",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain; with --tls-key serves TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="Prometheus /metrics port; -1 turns it off (--ray: the local cluster's metrics export port; -1: any)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address /metrics binds to (default: loopback)")
    p.add_argument("--grace-seconds", type=float, default=30.0, help="how long a shutdown lets calls finish")
    p.add_argument(
        "--snapshot-every", type=int, default=64, help="snapshot a pool once this many writes would replay (a shorter log needs none)"
    )
    p.add_argument(
        "--replay-seconds", type=float, default=2.0, help="snapshot a pool once replaying its log tail would take longer"
    )
    p.add_argument("--device-budget-mb", type=float, help="pools kept on the device (default: half the GPU memory free after loading; on the CPU, a quarter of the memory available)")
    p.add_argument("--host-budget-mb", type=float, help="pools kept in host memory off the device (default: a quarter of the memory available after loading)")
    p.add_argument(
        "--cache-budget-mb",
        type=float,
        help="decode caches of running generations (default: 40%% of the GPU memory free after loading; none on a CPU)",
    )
    p.add_argument("--max-pending", type=int, default=256, help="requests queued or running before RESOURCE_EXHAUSTED")
    p.add_argument(
        "--max-pending-per-tenant", type=int, help="requests one tenant may have queued or running (default: half of --max-pending)"
    )
    p.add_argument("--max-memories-per-tenant", type=int, help="memories one tenant may hold (default: no limit)")
    p.add_argument("--max-disk-mb-per-tenant", type=float, help="bytes on disk one tenant may hold, in MB (default: no limit)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    ray = p.add_argument_group("Ray Serve (pip install 'memagent[ray]'; README \"Scaling out\")")
    ray.add_argument("--ray", action="store_true", help="memories multiplexed over replicas sharing --data-dir")
    ray.add_argument("--replicas", type=int, default=2, help="engine replicas")
    ray.add_argument("--resident", type=int, default=8, help="memories one replica keeps loaded")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.set_defaults(run=run)


def _megabytes(value: float | None) -> int | None:
    return None if value is None else int(value * 1024 * 1024)


def _tokens(args: argparse.Namespace, log: logging.Logger) -> tuple[dict[str, str] | None, Path | None]:
    """The tokens and the file they came from (reloaded on SIGHUP)."""
    from memagent_server.auth import HOW_TO_PASS_A_TOKEN, create_tokens, load_tokens

    if args.no_auth:
        return None, None
    if args.tokens:
        return load_tokens(args.tokens), args.tokens
    path = args.data_dir / "tokens.json"
    if path.exists():
        return load_tokens(path), path
    log.warning(
        f"created a tokens file with one token for tenant 'default'; {HOW_TO_PASS_A_TOKEN}", extra={"path": str(path)}
    )
    return create_tokens(path), path


def no_progress_bars() -> None:
    """A server logs JSON lines on stderr; it does not draw bars between them.

    tqdm and huggingface_hub read their switches from the environment when first imported (so
    before the model is loaded), transformers keeps its own.
    """
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    no_progress_bars()
    from memagent_server import logs
    from memagent_server.server import Server, ServerConfig, is_loopback

    import memagent
    from memagent.store import MemoryStore, TenantQuota
    from memagent.store.data_dir_lock import DataDirBusy, DataDirLock

    if bool(args.tls_cert) != bool(args.tls_key):
        print("memagent serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.no_auth and not is_loopback(args.host) and not args.insecure_no_auth_on_public_address:
        print(
            f"memagent serve: refusing --no-auth on {args.host}, which is not a loopback address: anyone who "
            "reaches it reads and writes every memory. Use tokens, or add --insecure-no-auth-on-public-address.",
            file=sys.stderr,
        )
        return 2
    logs.setup(args.log_level)
    os.umask(0o077)  # every file and folder the server makes is its owner's only
    try:
        DataDirLock(args.data_dir).acquire()  # held until the process ends
    except DataDirBusy as err:
        print(f"memagent serve: {err}", file=sys.stderr)
        return 2
    tokens, tokens_file = _tokens(args, logging.getLogger("memagent_server"))
    if args.ray:
        return _run_on_ray(args, tokens)
    try:
        engine = memagent.load(
            args.model,
            device=args.device,
            max_long_term_tokens=args.max_long_term_tokens,
            quantize=args.quantize,
            compile_decode=args.compile_decode,
        )
    except ValueError as err:
        print(f"memagent serve: {err}", file=sys.stderr)
        return 2
    if args.cache_budget_mb is not None:
        engine.cache_budget.limit = _megabytes(args.cache_budget_mb)
    if args.compile_decode:
        start = time.perf_counter()
        engine.prepare_decode()
        seconds = round(time.perf_counter() - start, 1)
        logging.getLogger("memagent_server").info("decode steps compiled", extra={"seconds": seconds})
    store = MemoryStore(
        engine,
        args.data_dir,
        snapshot_every=args.snapshot_every,
        replay_seconds=args.replay_seconds,
        device_bytes=_megabytes(args.device_budget_mb),
        host_bytes=_megabytes(args.host_budget_mb),
        quota=TenantQuota(args.max_memories_per_tenant, _megabytes(args.max_disk_mb_per_tenant)),
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        tokens=tokens,
        tokens_file=tokens_file,
        insecure_no_auth_on_public_address=args.insecure_no_auth_on_public_address,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_host=args.metrics_host,
        max_pending=args.max_pending,
        max_pending_per_tenant=args.max_pending_per_tenant,
        grace_s=args.grace_seconds,
    )
    asyncio.run(Server(store, config).run_until_signalled())
    return 0


def _run_on_ray(args: argparse.Namespace, tokens: dict[str, str] | None) -> int:
    if args.tls_cert:
        print("memagent serve: --ray serves through Ray Serve's gRPC proxy, without TLS", file=sys.stderr)
        return 2
    from memagent_server.ray_app import RayConfig, run_until_signalled

    config = RayConfig(
        data_dir=str(args.data_dir.resolve()),
        model=args.model,
        device=args.device,
        replicas=args.replicas,
        resident=args.resident,
        tokens=tokens,
        snapshot_every=args.snapshot_every,
        max_long_term_tokens=args.max_long_term_tokens,
        quantize=args.quantize,
        compile_decode=args.compile_decode,
        max_pending=args.max_pending,
        max_pending_per_tenant=args.max_pending_per_tenant,
        gpus_per_replica=1.0 if args.device.startswith("cuda") else 0.0,
    )
    metrics_port = None if args.metrics_port < 0 else args.metrics_port  # a local cluster's export port
    run_until_signalled(config, args.port, args.ray_address, metrics_port=metrics_port)
    return 0
