"""``clustermesh-apiserver etcdinit``: Cilium's etcd users and roles, then auth on.

One command, two modes, chosen by the flags:

* **upstream mode** (the default; Cilium's Helm chart runs it as the ``etcd-init`` init
  container): empty ``--etcd-data-dir``, start a private etcd on it, create the users
  and roles, enable auth, stop etcd (:mod:`apiserver.etcdinit_upstream`).  The pod's etcd
  container then serves that directory with auth enforced.
* **client mode** (``--kvstore-opt etcd.config=FILE``; our own chart and the local mesh,
  where etcd is already running beside us): connect with that client configuration (as
  root) and make the running etcd hold the users and roles, idempotently, waiting for it
  to come up within ``--timeout``.

Both create the same users and roles, with the same code (:mod:`apiserver.etcdinit_auth`,
whose docstring has the table).  Flags follow Cilium's conventions
(:mod:`clustermesh.goflags`): the upstream ones (``--etcd-data-dir``,
``--etcd-initial-cluster-token``, ``--etcd-cluster-name``, ``--cluster-name``,
``--timeout``, ``--debug``) plus ours (``--kvstore-opt``, ``--cluster-users-config-path``,
``--log-level``, ``--log-format``); each one also read from ``CILIUM_<FLAG_UPPER_SNAKE>``
(the chart passes the cluster name as ``CILIUM_CLUSTER_NAME``), an explicit flag winning.
Giving an upstream-mode flag together with ``etcd.config`` is refused before anything is
touched: it would be ambiguous which etcd is meant.

Exit status: 0 done; 1 a bad command line (cobra's ``Error: ...`` and usage); 255 any
failure of the run, timeouts included (upstream's ``os.Exit(-1)``; our client mode uses
it too, so a script can tell a typo from a failed run).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from clustermesh.backoff import ETCD_STARTING, Backoff
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.clusterconfig import validate_cluster_name
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import EtcdConfigError, EtcdConfigFileMissing, load_etcd_config
from clustermesh.etcd.errors import EtcdError, EtcdUnavailable
from clustermesh.goflags import FlagError, FlagSet, Parsed, log_no_effect
from clustermesh.logs import setup_logging

from .etcdinit_auth import (
    ALL_KEYS,
    ROOT,
    EtcdInitFailed,
    Grant,
    desired_auth,
    etcdinit,
    users_and_roles,
)
from .etcdinit_upstream import UpstreamOptions, find_etcd, initialise
from .users import load_users_file

__all__ = [
    "ALL_KEYS",
    "ROOT",
    "Grant",
    "build_parser",
    "desired_auth",
    "etcdinit",
    "main",
]

log = logging.getLogger(__name__)

PROG = "clustermesh-apiserver etcdinit"
#: The flags that only mean something in upstream mode.
UPSTREAM_FLAGS = ("etcd-data-dir", "etcd-initial-cluster-token", "etcd-cluster-name")
EXIT_FAILED = 255


def build_parser() -> FlagSet:
    fs = FlagSet(
        command=PROG,
        short="Initialise the etcd of the clustermesh-apiserver: Cilium's users and roles, "
              "auth enabled",
        long="Initialise the etcd of the clustermesh-apiserver: create Cilium's users and "
             "roles\n(root, admin-<cluster>, externalworkload, local-<cluster>, remote), then "
             "enable\nauthentication.\n\nBy default (upstream mode) the contents of "
             "--etcd-data-dir are deleted and a\nprivate etcd is started on "
             "http://localhost:2379 to initialise a new data directory.\nWith --kvstore-opt "
             "etcd.config=FILE (client mode) the running etcd that FILE\nreaches is "
             "initialised instead, idempotently.\n\nEvery flag can also be set as "
             "CILIUM_<FLAG> (e.g. CILIUM_CLUSTER_NAME).")
    fs.string("etcd-data-dir", default="/var/run/etcd",
              help="Etcd data directory to empty and initialise (upstream mode)")
    fs.string("etcd-initial-cluster-token", default="clustermesh-apiserver",
              help="Initial cluster token of the new etcd (upstream mode); the etcd "
                   "container must use the same")
    fs.string("etcd-cluster-name", default="clustermesh-apiserver",
              help="Name (--name) of the new etcd member (upstream mode); the etcd "
                   "container must use the same")
    fs.string("cluster-name", default="default",
              help="Name of the Cilium cluster, used in the admin-<name> and local-<name> "
                   "user names and in the remote role's permissions")
    fs.duration("timeout", default=120.0,
                help="Give up after this long, etcd start-up included")
    fs.boolean("debug", help="Log at debug level (same as --log-level=debug)")
    fs.string_map("kvstore-opt",
                  help="etcd.config=FILE: client mode, initialise the running etcd this etcd "
                       "client configuration reaches (as root)")
    fs.string("cluster-users-config-path",
              help="Also create the users of this users.yaml (users: [{name, role}]); the "
                   "entry named after this cluster is skipped")
    fs.string("log-level", default="info", choices=("debug", "info", "warning", "error"),
              help="Log level: debug, info, warning or error")
    fs.string("log-format", default="text", choices=("text", "json"),
              help="Log format: text or json")
    return fs


def _source(fs: FlagSet, args: Parsed, name: str) -> str:
    """How the user set the flag ``name``: ``--name`` or its environment variable."""
    if name in args.explicit:
        return f"--{name}"
    return next(f.env for f in fs.flags() if f.name == name)


def _check_flags(fs: FlagSet, args: Parsed) -> None:
    """Everything that can be refused from the command line alone; FlagError."""
    name = args.cluster_name
    try:
        validate_cluster_name(name)
    except ValueError as exc:
        source = _source(fs, args, "cluster-name")
        origin = "" if source.startswith("--") else f" (from {source})"
        raise FlagError(f'invalid argument "{name}" for "--cluster-name" flag{origin}: '
                        f"{exc}") from None
    opts: Mapping[str, str] = args.kvstore_opt
    if args.is_set("kvstore-opt") and not opts.get("etcd.config"):
        raise FlagError(f"{_source(fs, args, 'kvstore-opt')}: etcdinit understands only "
                        "etcd.config=FILE (client mode); without it, leave the flag out")
    if opts.get("etcd.config"):
        upstream = [_source(fs, args, f) for f in UPSTREAM_FLAGS if args.is_set(f)]
        if upstream:
            raise FlagError(
                f"{_source(fs, args, 'kvstore-opt')} etcd.config=... (client mode: initialise "
                f"a running etcd) cannot be combined with {', '.join(upstream)} (upstream "
                "mode: initialise a data directory with a private etcd); give one or the other")
        return
    for flag in UPSTREAM_FLAGS:
        if not getattr(args, flag.replace("-", "_")):
            raise FlagError(f"--{flag} must not be empty")
    if Path(args.etcd_data_dir).resolve() == Path("/"):
        raise FlagError(f'invalid argument "{args.etcd_data_dir}" for "--etcd-data-dir" '
                        "flag: refusing to empty the root directory")


# ------------------------------------------------------------------------ client mode


async def _run_client(config_path: Path, *, cluster_name: str, extra_users: Mapping[str, str],
                      timeout: float, on_action: Callable[[str], None],
                      clock: Clock = REAL_CLOCK) -> list[str]:
    """Connect (retrying on :data:`~clustermesh.backoff.ETCD_STARTING` while etcd or its
    configuration is not there yet) and initialise, all within ``timeout``.

    ``timeout`` is a deadline of the event loop (``asyncio.timeout_at``), not a timer
    of ours: it bounds the whole run, and what is left of it bounds each dial and
    request of the etcd client.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    backoff = Backoff(ETCD_STARTING, clock=clock)
    last: Exception | None = None
    attempt = 0
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                attempt += 1
                try:
                    config = load_etcd_config(config_path)
                    if attempt == 1:
                        for warning in config.warnings:
                            log.warning("%s", warning)
                    remaining = max(deadline - loop.time(), 0.1)
                    client = EtcdClient(config, name="etcdinit",
                                        dial_timeout=min(5.0, remaining),
                                        request_timeout=min(30.0, remaining),
                                        tls_reload_interval=0)
                    try:
                        await client.connect()
                        return await etcdinit(client, cluster_name=cluster_name,
                                              extra_users=extra_users, on_action=on_action)
                    finally:
                        await client.close()
                except (EtcdUnavailable, EtcdConfigFileMissing) as exc:
                    # etcd usually starts in parallel in the same pod, and Secret volumes
                    # are filled asynchronously: wait for both.
                    last = exc
                    log.info("etcd not ready yet (attempt %d): %s; retrying", attempt, exc)
                    await backoff.wait()
    except TimeoutError:
        if last is None:
            what = "etcd answered, but the initialisation did not finish in time"
        elif isinstance(last, EtcdConfigFileMissing):
            what = "the etcd configuration is incomplete"
        else:
            what = "could not reach etcd"
        raise EtcdInitFailed(f"gave up after {timeout:g}s (--timeout): {what}"
                             + (f": {last}" if last else "")) from None


def _client_mode(args: Parsed, extra_users: Mapping[str, str], *,
                 clock: Clock = REAL_CLOCK) -> None:
    started = clock.monotonic()
    # Actions are printed as they are taken: a run that fails half-way shows them too.
    actions = asyncio.run(_run_client(
        Path(args.kvstore_opt["etcd.config"]), cluster_name=args.cluster_name,
        extra_users=extra_users, timeout=args.timeout,
        on_action=lambda action: print(action, flush=True), clock=clock))
    took = clock.monotonic() - started
    if actions:
        print(f"etcd initialised for cluster {args.cluster_name} "
              f"({len(actions)} actions, {took:.1f}s)")
    else:
        print(f"etcd already initialised for cluster {args.cluster_name}: nothing to do")


# ---------------------------------------------------------------------- upstream mode


def _upstream_mode(args: Parsed, extra_users: Mapping[str, str]) -> None:
    options = UpstreamOptions(
        data_dir=Path(args.etcd_data_dir), etcd_cluster_name=args.etcd_cluster_name,
        initial_cluster_token=args.etcd_initial_cluster_token,
        cluster_name=args.cluster_name, timeout=args.timeout, extra_users=extra_users)
    asyncio.run(initialise(options, binary=find_etcd()))


# ------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """``clustermesh-apiserver etcdinit [flags]``; returns the exit status.

    ``argv`` are the arguments after the program name; a leading ``etcdinit`` is
    accepted too.  Reads ``CILIUM_*`` from the environment.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["etcdinit"]:
        args_list = args_list[1:]
    fs = build_parser()
    try:
        args = fs.parse_or_exit(args_list)
        try:
            _check_flags(fs, args)
        except FlagError as exc:
            fs.fail(str(exc))
    except SystemExit as exc:  # -h (0) or a bad command line (1), already printed
        return int(exc.code or 0)
    setup_logging(level="debug" if args.debug else args.log_level, fmt=args.log_format)
    log_no_effect(fs, args, log)
    client_mode = bool(args.kvstore_opt.get("etcd.config"))
    try:
        users_path = args.cluster_users_config_path
        extra = (load_users_file(Path(users_path), cluster_name=args.cluster_name)
                 if users_path else {})
        users_and_roles(args.cluster_name, extra)  # refused here, before anything is touched
        if client_mode:
            _client_mode(args, extra)
        else:
            _upstream_mode(args, extra)
    except EtcdConfigError as exc:
        print(f"{PROG}: error: invalid etcd configuration: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (EtcdInitFailed, EtcdError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # the etcd child, if any, was killed on the way out
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
