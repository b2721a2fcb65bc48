"""Configuration files and the flags every command shares.

``--config FILE`` (YAML ``.yaml`` / ``.yml`` or TOML ``.toml``) gives a command's options as a
flat mapping whose keys are the long flags without their dashes (``eps``, ``max-radius`` or
``max_radius``) and the positional arguments by name (``model``); an optional ``command`` key
must name the command. Values are checked by the same rules as the flags; flags on the command
line override the file; an unknown key is an error naming it. ``--print-config`` prints the
effective configuration (file, flags and defaults merged) in that format and exits, so its
output is itself a configuration file.
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from certify.errors import CertifyError

SUFFIXES = (".yaml", ".yml", ".toml")
# dests that are no options of a run (never in a configuration)
NOT_CONFIG = {"help", "config", "print_config", "debug", "func", "command", "convex_method"}


class Renamed(argparse.Action):
    """A flag that no longer exists under this name: refused with the name to use instead."""

    def __init__(self, option_strings, dest, hint: str = "", **kw):
        kw.update(nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, dest=argparse.SUPPRESS, **kw)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not an option of certify {parser.prog.split()[-1]}: {self.hint}")


def add_renamed(p: argparse.ArgumentParser, flag: str, hint: str) -> None:
    """Refuse ``flag`` with ``hint`` (e.g. ``--n``: 'use --count for the number of inputs')."""
    p.add_argument(flag, action=Renamed, hint=hint)


def add_shared_flags(p: argparse.ArgumentParser) -> None:
    """--config, --print-config, and the global --debug / --threads, accepted after the command too."""
    from certify.cli.argtypes import positive_int
    g = p.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="read options from a YAML (.yaml/.yml) or TOML (.toml) file: keys are the long flags "
                        "without dashes (eps, max-radius), positional arguments by name (model); flags given "
                        "here override the file")
    g.add_argument("--print-config", action="store_true",
                   help="print the effective configuration (file, flags and defaults) as YAML and exit")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    g.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS,
                   help="torch intra-op threads, at least 1 (default: torch's choice)")


def find_config(argv: list[str]) -> str | None:
    """The FILE of ``--config FILE`` / ``--config=FILE`` in ``argv`` (the last one), or None."""
    path = None
    for k, tok in enumerate(argv):
        if tok == "--config" and k + 1 < len(argv):
            path = argv[k + 1]
        elif tok.startswith("--config="):
            path = tok.split("=", 1)[1]
    return path


def read_config(path: str) -> dict:
    """The mapping in a YAML or TOML configuration file (``CertifyError`` naming the file and the
    problem: missing, unknown suffix, syntax error, not a mapping)."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise CertifyError(f"config file {path}: unknown format (expected {', '.join(SUFFIXES)})")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CertifyError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise CertifyError(f"config file {path} is a directory") from None
    except UnicodeDecodeError:
        raise CertifyError(f"config file {path}: not a text file") from None
    if p.suffix.lower() == ".toml":
        import tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CertifyError(f"config file {path}: not valid TOML ({e})") from None
    else:
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CertifyError(f"config file {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CertifyError(f"config file {path}: expected a mapping of option: value, got a {type(data).__name__}")
    return data


def _key(name: str) -> str:
    return name.lstrip("-").replace("_", "-")


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Configuration key -> action: every long flag without its dashes and every positional by dest."""
    out = {}
    for a in parser._actions:
        if a.dest in NOT_CONFIG and not isinstance(a, Renamed):
            continue
        if not a.option_strings:
            out[_key(a.dest)] = a
        for s in a.option_strings:
            if s.startswith("--"):
                out[_key(s)] = a
    return out


def _convert(action: argparse.Action, value, where: str):
    """A configuration value checked as argparse checks the flag's text."""
    if isinstance(action, Renamed):
        raise CertifyError(f"{where}: {action.hint}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise CertifyError(f"{where}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if value is None:
        return None
    if isinstance(value, dict):
        raise CertifyError(f"{where}: expected a value, got a mapping")
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many != isinstance(value, list):
        raise CertifyError(f"{where}: expected {'a list of values' if many else 'one value, not a list'}, "
                           f"got {value!r}")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        raise CertifyError(f"{where}: expected {action.nargs} values, got {len(value)}")
    if action.nargs == "+" and not value:
        raise CertifyError(f"{where}: expected at least one value")

    def one(v):
        if isinstance(v, (list, dict)):
            raise CertifyError(f"{where}: expected a plain value, got {v!r}")
        if isinstance(v, bool):      # YAML's true/false for a flag that takes a value
            raise CertifyError(f"{where}: expected a value, got {v!r}")
        text = str(v)
        try:
            out = action.type(text) if action.type else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise CertifyError(f"{where}: {e}") from None
        if action.choices is not None and out not in action.choices:
            raise CertifyError(f"{where}: invalid choice {out!r} (choose from {', '.join(map(str, action.choices))})")
        return out

    return [one(v) for v in value] if many else one(value)


def apply_config(parser: argparse.ArgumentParser, command: str, path: str) -> None:
    """Make the options of configuration file ``path`` the defaults of ``parser`` (certify
    ``command``'s sub-parser), so flags on the command line still override them."""
    data = read_config(path)
    actions = _actions(parser)
    if "command" in data and data["command"] != command:
        raise CertifyError(f"config file {path} is for certify {data['command']}, not certify {command}")
    for key, value in data.items():
        if key == "command":
            continue
        a = actions.get(_key(str(key)))
        if a is None:
            close = difflib.get_close_matches(_key(str(key)), list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CertifyError(f"config file {path}: unknown key {key!r} for certify {command}{hint}")
        v = _convert(a, value, f"config file {path}: key {key!r}")
        if not a.option_strings:          # a positional given by the file: optional on the command line
            a.nargs = {None: "?", "+": "*"}.get(a.nargs, a.nargs)
            a.required = False
        a.required = False
        parser.set_defaults(**{a.dest: v})
        a.default = v


def relax_required(parser: argparse.ArgumentParser) -> None:
    """Let ``--print-config`` show a configuration whose required options are still missing."""
    for a in parser._actions:
        if a.required or (not a.option_strings and a.nargs in (None, "+")):
            a.required = False
            if not a.option_strings:
                a.nargs = {None: "?", "+": "*"}.get(a.nargs, a.nargs)


def effective_config(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str,
                     exclude: tuple[str, ...] = ()) -> dict:
    """The options of a parsed command line as a configuration (``command`` first, then every
    option by its long flag name, positionals by name); tuples become lists."""
    out = {"command": command}
    seen = set()
    for a in parser._actions:
        if a.dest in NOT_CONFIG or a.dest in seen or a.dest in exclude or isinstance(a, Renamed):
            continue
        if a.dest == argparse.SUPPRESS or not hasattr(args, a.dest):
            continue
        seen.add(a.dest)
        key = next((s[2:] for s in a.option_strings if s.startswith("--")), a.dest.replace("_", "-"))
        v = getattr(args, a.dest)
        out[key] = list(v) if isinstance(v, tuple) else v
    return out


def dump_config(config: dict) -> str:
    """YAML text of a configuration (readable back by ``read_config``)."""
    import yaml
    lines = []
    for k, v in config.items():      # one line per option, lists in flow style ([0.0, 1.0])
        text = yaml.safe_dump(v, default_flow_style=True, width=1_000_000).strip()
        lines.append(f"{k}: {text.removesuffix('...').strip()}\n")
    return "".join(lines)
