"""Cilium's command-line conventions (cobra + pflag + viper), shared by every subcommand.

Upstream's commands are cobra commands whose flags are pflag flags, each also bound to a
``CILIUM_<FLAG_IN_UPPER_SNAKE_CASE>`` environment variable. Scripts, the Helm chart and
cilium-cli's sysdump depend on the details, so this module reproduces them rather than
argparse's conventions. It is a small scanner of its own, not an argparse wrapper:
argparse cannot express pflag's bool rule (``--flag false`` must leave ``false`` as a
positional word) nor print cobra's messages, and prefix matching ("abbreviations") is
exactly what pflag does not do.

API::

    fs = FlagSet(command="clustermesh-apiserver kvstoremesh", short="Run KVStoreMesh")
    fs.string("cluster-name", default="default", help="Name of the cluster")
    fs.uint("cluster-id", default=0, help="Unique identifier of the cluster")
    fs.boolean("debug", shorthand="D", help="Enable debugging mode")
    fs.duration("per-cluster-ready-timeout", default=15.0, help="...")   # seconds
    fs.string_map("kvstore-opt", help="Key-value store options")
    fs.string_slice("controller-group-metrics", help="...")
    fs.boolean("enable-gops", default=True, help="...", no_effect="gops is a Go agent")
    args = fs.parse_or_exit(argv, env=os.environ)   # errors: exit 1; -h/--help: exit 0
    args.cluster_name, args.positionals, args.explicit, args.from_env
    log_no_effect(fs, args, log)                     # the one "accepted without effect" line

``FlagSet.parse`` raises :class:`FlagError` instead of exiting (for tests and callers
that add their own handling); :func:`run_group` dispatches subcommands the way a cobra
parent command does.

Syntax, as pflag: ``--name=value`` or ``--name value``; a bool flag is ``--name`` (true)
or ``--name=VALUE`` with Go's strconv.ParseBool values (1 t T TRUE true True 0 f F FALSE
false False), and never takes the next word: ``--name false`` sets the flag true and
``false`` lands in ``positionals`` (the daemons ignore positionals, as upstream's do).
Shorthands: ``-D``, ``-o json``, ``-ojson``, ``-o=json``. ``--`` ends the flags. Positional
words may sit between flags. A string flag given twice keeps the last value; a map flag
(``stringToString``: ``k=v``, also ``k1=v1,k2=v2``; a value with one ``=`` is one pair
even with commas in it) merges; a slice flag (comma-separated) appends. Durations are Go
durations (``2m``, ``1m30s``, ``500ms``), held in seconds.

Environment (unless ``bind_env=False``, for upstream's plain cobra commands such as the
``*-dbg`` ones): every flag that is not given on the command line is read from
``CILIUM_<NAME>`` (``--kvstore-opt`` -> ``CILIUM_KVSTORE_OPT``), with the flag's own
value syntax; an empty variable counts as unset (viper's default); an explicit flag wins.
A map flag is written like its flag value, ``CILIUM_KVSTORE_OPT=etcd.config=/x,etcd.qps=20``,
or as a JSON object (``{"etcd.config": "/x"}``, which viper also accepts); a slice flag
is comma-separated. Variables that name no flag (Kubernetes' service links such as
``CILIUM_ENVOY_PORT``) are ignored: only names derived from registered flags are looked up.

Errors print cobra's text to stderr, ``Error: unknown flag: --x`` or ``Error: invalid
argument "v" for "--flag" flag: <reason>`` (``... flag (from CILIUM_X): ...`` for a bad
environment value) followed by the ``Usage:`` block, and exit 1. Upstream's wrapper also
prints the error a second time on stdout; we do not.

Accepted without effect: a flag registered with ``no_effect="why"`` parses like any
other; :func:`log_no_effect` logs one line naming those that were set (on the command
line or via env) with their reasons, and a warning for ignored positional words.
``FlagSet.parse_args``/``prog`` let code written against argparse (tests feeding rendered
chart arguments) use a FlagSet unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .flags import (
    format_duration,
    go_duration,
    go_int,
    go_map,
    go_map_env,
    go_number,
    go_slice,
    go_uint,
    parse_bool,
)

ENV_PREFIX = "CILIUM_"


class FlagError(ValueError):
    """A command line pflag would refuse; ``str()`` is the message after ``Error: ``."""


class HelpRequested(Exception):
    """``-h``/``--help`` was given."""


# kind -> (type word shown in usage, parser of one command-line value)
_KINDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "string": ("string", str),
    "bool": ("", parse_bool),
    "int": ("int", go_int),
    "uint": ("uint32", go_uint),
    "float": ("float", go_number),
    "duration": ("duration", go_duration),
    "map": ("stringToString", go_map),
    "slice": ("strings", go_slice),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    name: str
    kind: str
    default: Any
    help: str
    shorthand: str = ""
    hidden: bool = False
    no_effect: str = ""  # why the flag is accepted without effect ("" = it has one)
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # further long names (ours, e.g. --kubeconfig)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def label(self) -> str:
        """How pflag names the flag in messages: ``--name`` or ``-s, --name``."""
        return f"-{self.shorthand}, --{self.name}" if self.shorthand else f"--{self.name}"

    def convert(self, text: str, *, from_env: bool = False) -> Any:
        parse = go_map_env if from_env and self.kind == "map" else _KINDS[self.kind][1]
        value = parse(text)
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return value


@dataclass(slots=True)
class Parsed:
    """Parsed values by ``dest`` (``args.cluster_name``) plus how each was set."""

    values: dict[str, Any]
    positionals: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)  # flag names given on the command line
    from_env: set[str] = field(default_factory=set)  # flag names taken from CILIUM_*

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def is_set(self, name: str) -> bool:
        return name in self.explicit or name in self.from_env


class FlagSet:
    """The flags of one command, its usage text and its parser (see the module docstring)."""

    def __init__(self, *, command: str, short: str = "", long: str = "",
                 args_usage: str = "", bind_env: bool = True) -> None:
        self.command = command
        self.args_usage = args_usage  # positional words shown in usage: "[clusters...]"
        self.short = short
        self.long = long
        self.bind_env = bind_env  # False: a plain cobra command (the *-dbg ones), no viper
        self._flags: dict[str, Flag] = {}
        self._long: dict[str, Flag] = {}
        self._short: dict[str, Flag] = {}

    # ------------------------------------------------------------ registration

    def add(self, name: str, *, kind: str, default: Any, help: str, shorthand: str = "",
            hidden: bool = False, no_effect: str = "", choices: Sequence[str] = (),
            aliases: Sequence[str] = ()) -> Flag:
        if kind not in _KINDS:
            raise ValueError(f"--{name}: unknown flag kind {kind!r}")
        flag = Flag(name=name, kind=kind, default=default, help=help, shorthand=shorthand,
                    hidden=hidden, no_effect=no_effect, choices=tuple(choices),
                    aliases=tuple(aliases))
        for long_name in (name, *flag.aliases):
            if long_name in self._long or long_name == "help":
                raise ValueError(f"{self.command}: flag --{long_name} defined twice")
            self._long[long_name] = flag
        if shorthand:
            if shorthand in self._short or shorthand == "h":
                raise ValueError(f"{self.command}: shorthand -{shorthand} defined twice")
            self._short[shorthand] = flag
        self._flags[name] = flag
        return flag

    def string(self, name: str, *, default: str = "", help: str, **kw: Any) -> Flag:
        return self.add(name, kind="string", default=default, help=help, **kw)

    def boolean(self, name: str, *, default: bool = False, help: str, **kw: Any) -> Flag:
        return self.add(name, kind="bool", default=default, help=help, **kw)

    def integer(self, name: str, *, default: int = 0, help: str, **kw: Any) -> Flag:
        return self.add(name, kind="int", default=default, help=help, **kw)

    def uint(self, name: str, *, default: int = 0, help: str, **kw: Any) -> Flag:
        return self.add(name, kind="uint", default=default, help=help, **kw)

    def number(self, name: str, *, default: float = 0.0, help: str, **kw: Any) -> Flag:
        return self.add(name, kind="float", default=default, help=help, **kw)

    def duration(self, name: str, *, default: float = 0.0, help: str, **kw: Any) -> Flag:
        return self.add(name, kind="duration", default=default, help=help, **kw)

    def string_map(self, name: str, *, help: str, **kw: Any) -> Flag:
        return self.add(name, kind="map", default={}, help=help, **kw)

    def string_slice(self, name: str, *, default: Sequence[str] = (), help: str,
                     **kw: Any) -> Flag:
        return self.add(name, kind="slice", default=list(default), help=help, **kw)

    def flags(self) -> list[Flag]:
        return list(self._flags.values())

    # ------------------------------------------------------------ parsing

    def parse(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Parsed:
        """Parse ``argv`` then the environment; FlagError or HelpRequested on the way."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        parsed = Parsed(values={})
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                parsed.positionals.extend(args[i:])
                break
            if arg.startswith("--"):
                name, eq, inline = arg[2:].partition("=")
                if name == "help":
                    raise HelpRequested
                flag = self._long.get(name)
                if flag is None:
                    raise FlagError(f"unknown flag: --{name}")
                if eq:
                    text = inline
                elif flag.kind == "bool":
                    text = "true"
                elif i < len(args):
                    text = args[i]
                    i += 1
                else:
                    raise FlagError(f"flag needs an argument: --{name}")
                self._set(flag, text, values, parsed)
            elif arg.startswith("-") and arg != "-":
                i = self._shorthands(arg, args, i, values, parsed)
            else:
                parsed.positionals.append(arg)
        for flag in self._flags.values():
            if flag.name in parsed.explicit or not self.bind_env:
                continue
            text = env.get(flag.env, "")
            if text:
                try:
                    values[flag.name] = flag.convert(text, from_env=True)
                except ValueError as exc:
                    raise FlagError(f'invalid argument "{text}" for "{flag.label}" flag '
                                    f"(from {flag.env}): {exc}") from None
                parsed.from_env.add(flag.name)
        for flag in self._flags.values():
            default = flag.default
            if isinstance(default, dict | list):
                default = type(default)(default)
            parsed.values[flag.dest] = values.get(flag.name, default)
        return parsed

    def _shorthands(self, arg: str, args: list[str], i: int, values: dict[str, Any],
                    parsed: Parsed) -> int:
        """``-D``, ``-Dv`` (bools combined), ``-o json``, ``-ojson``, ``-o=json``."""
        rest = arg[1:]
        while rest:
            char, rest = rest[0], rest[1:]
            if char == "h":
                raise HelpRequested
            flag = self._short.get(char)
            if flag is None:
                raise FlagError(f"unknown shorthand flag: '{char}' in {arg}")
            if rest.startswith("="):
                self._set(flag, rest[1:], values, parsed)
                return i
            if flag.kind == "bool":
                self._set(flag, "true", values, parsed)
                continue
            if rest:
                self._set(flag, rest, values, parsed)
                return i
            if i >= len(args):
                raise FlagError(f"flag needs an argument: '{char}' in -{char}")
            self._set(flag, args[i], values, parsed)
            return i + 1
        return i

    @staticmethod
    def _set(flag: Flag, text: str, values: dict[str, Any], parsed: Parsed) -> None:
        try:
            value = flag.convert(text)
        except ValueError as exc:
            raise FlagError(f'invalid argument "{text}" for "{flag.label}" flag: {exc}') from None
        if flag.name in parsed.explicit and flag.kind == "map":
            value = {**values[flag.name], **value}
        elif flag.name in parsed.explicit and flag.kind == "slice":
            value = [*values[flag.name], *value]
        values[flag.name] = value
        parsed.explicit.add(flag.name)

    def parse_or_exit(self, argv: Sequence[str], *,
                      env: Mapping[str, str] | None = None) -> Parsed:
        """:meth:`parse`, printing help (exit 0) or cobra's error and usage (exit 1)."""
        try:
            return self.parse(argv, env=env)
        except HelpRequested:
            sys.stdout.write(self.help())
            raise SystemExit(0) from None
        except FlagError as exc:
            self.fail(str(exc))

    @property
    def prog(self) -> str:
        return self.command

    def parse_args(self, argv: Sequence[str]) -> Parsed:
        """argparse's entry point: :meth:`parse_or_exit` without reading the environment
        (tests feed rendered arguments through it, whatever the test runner's env holds)."""
        return self.parse_or_exit(argv, env={})

    def fail(self, message: str) -> NoReturn:
        """Cobra's flag-error output: ``Error: <message>``, the usage block, exit 1."""
        sys.stderr.write(f"Error: {message}\n{self.usage()}\n")
        raise SystemExit(1)

    # ------------------------------------------------------------ usage

    def usage(self) -> str:
        words = f" {self.args_usage}" if self.args_usage else ""
        lines = ["Usage:", f"  {self.command}{words} [flags]", "", "Flags:"]
        rows: list[tuple[str, str]] = []
        for flag in sorted(self._flags.values(), key=lambda f: f.name):
            if flag.hidden:
                continue
            left = f"  -{flag.shorthand}, --{flag.name}" if flag.shorthand \
                else f"      --{flag.name}"
            type_word = _KINDS[flag.kind][0]
            if type_word:
                left += f" {type_word}"
            rows.append((left, flag.help + _default_text(flag)))
            rows.extend((f"      --{alias}", f"same as --{flag.name}")
                        for alias in flag.aliases)
        rows.append(("  -h, --help", f"help for {self.command.rsplit(' ', 1)[-1]}"))
        width = max(len(left) for left, _ in rows) + 3
        lines.extend(f"{left.ljust(width)}{text}" for left, text in rows)
        return "\n".join(lines) + "\n"

    def help(self) -> str:
        head = self.long or self.short
        return (f"{head}\n\n" if head else "") + self.usage()


def _default_text(flag: Flag) -> str:
    d = flag.default
    if not d:  # pflag shows no zero default
        return ""
    if flag.kind == "string":
        return f' (default "{d}")'
    if flag.kind == "duration":
        return f" (default {format_duration(d)})"
    if flag.kind == "slice":
        return f" (default [{','.join(d)}])"
    if flag.kind == "bool":
        return " (default true)"
    return f" (default {d})"


def no_effect_flags(fs: FlagSet, parsed: Parsed) -> list[Flag]:
    """The flags set (on the command line or via env) that are accepted without effect."""
    return [f for f in fs.flags() if f.no_effect and parsed.is_set(f.name)]


def log_no_effect(fs: FlagSet, parsed: Parsed, logger: logging.Logger) -> None:
    """Log ONE line naming every set no-effect flag and why it has none (nothing if none)."""
    flags = no_effect_flags(fs, parsed)
    if flags:
        logger.info("Flags accepted without effect in this implementation: %s",
                    "; ".join(f"--{f.name} ({f.no_effect})" for f in flags))
    if parsed.positionals:
        # Upstream ignores them silently; most often this is `--bool-flag false`.
        logger.warning("Ignoring positional arguments %s (a bool flag takes its value as "
                       "--flag=false, not --flag false)", " ".join(parsed.positionals))


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    name: str
    short: str
    run: Callable[[list[str]], int]
    hidden: bool = False


def group_usage(*, path: str, commands: Sequence[Command]) -> str:
    shown = [c for c in commands if not c.hidden]
    width = max((len(c.name) for c in shown), default=0) + 2
    lines = ["Usage:", f"  {path} [command]", "", "Available Commands:"]
    lines.extend(f"  {c.name.ljust(width)}{c.short}" for c in shown)
    lines += ["", "Flags:", f"  -h, --help   help for {path.rsplit(' ', 1)[-1]}", "",
              f'Use "{path} [command] --help" for more information about a command.']
    return "\n".join(lines) + "\n"


def run_group(argv: Sequence[str], *, path: str, short: str,
              commands: Sequence[Command]) -> int:
    """Dispatch to a subcommand the way a cobra parent command without ``Run`` does.

    No argument or ``-h``/``--help``: the help text, exit 0. An unknown word: cobra's
    ``Error: unknown command "x" for "<path>"`` and the ``Run '<path> --help'`` hint on
    stderr, exit 1 (cobra itself only does this at the root; we do it at every level, as
    a typo under ``kvstoremesh-dbg`` is just as wrong). A flag before the command:
    ``unknown flag``, as a parent has only ``--help``.
    """
    by_name = {c.name: c for c in commands}
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(f"{short}\n\n{group_usage(path=path, commands=commands)}")
        return 0
    word = argv[0]
    if word.startswith("-"):
        error = (f"unknown flag: {word.partition('=')[0]}" if word.startswith("--")
                 else f"unknown shorthand flag: '{word[1:2]}' in {word}")
        sys.stderr.write(f"Error: {error}\n"
                         f"{group_usage(path=path, commands=commands)}\n")
        return 1
    command = by_name.get(word)
    if command is None:
        sys.stderr.write(f'Error: unknown command "{word}" for "{path}"\n'
                         f"Run '{path} --help' for usage.\n")
        return 1
    return command.run(list(argv[1:]))
