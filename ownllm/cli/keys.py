"""`ownllm keys`: create, list and revoke API keys; list tenants and set their limits.

`create` prints the secret key once (on stdout, alone on its line, so scripts can capture
it); only its hash is stored. A new key gets `gateway.keys.DEFAULT_KEY_LIMITS` (rpm 60,
tpm 100000, 4 in flight) for every limit not given; 0 removes one, `--unlimited` all. Works on the database of the config (`--data-dir`,
OWNLLM_DATABASE_URL), so run it where the server's database is reachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

LIMIT_FLAGS = ("rpm", "tpm", "max_concurrent", "monthly_tokens")


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute (per gateway replica)")
    parser.add_argument("--tpm", type=int, help="tokens per minute (per gateway replica)")
    parser.add_argument("--max-concurrent", type=int, help="requests in flight at once")
    parser.add_argument(
        "--monthly-tokens", type=int, help="token budget per calendar month (UTC, all replicas)"
    )


def _default_limits_help() -> str:
    from ownllm.gateway.keys import DEFAULT_KEY_LIMITS

    return (
        f"A new key is limited to {_limit_text(DEFAULT_KEY_LIMITS)} unless told otherwise: a "
        "flag sets that limit, 0 removes it (e.g. --max-concurrent 0), --unlimited removes "
        "every default."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    common = argparse.ArgumentParser(add_help=False)
    add_config_arguments(common)  # on every action: `ownllm keys list --data-dir DIR`
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser(
        "create",
        parents=[common],
        help="create a key (and its tenant)",
        description=f"Create a key (and its tenant). {_default_limits_help()}",
    )
    create.add_argument("--tenant", required=True, help="tenant name, e.g. acme")
    create.add_argument("--name", required=True, help="what the key is for, e.g. ci")
    create.add_argument(
        "--scopes",
        help="comma-separated: inference,files,fine-tuning,adapters,usage (default: all)",
    )
    _limit_arguments(create)
    create.add_argument(
        "--unlimited", action="store_true", help="no default limits: only the limits given"
    )
    listing = sub.add_parser("list", parents=[common], help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key by id (key-…)")
    revoke.add_argument("key_id")
    sub.add_parser("tenants", parents=[common], help="list tenants and their limits")
    limits = sub.add_parser("limits", parents=[common], help="set the limits of a tenant or a key")
    who = limits.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant")
    who.add_argument("--key", metavar="KEY_ID")
    limits.add_argument(
        "--clear", action="store_true", help="remove limits not given (0 removes one)"
    )
    _limit_arguments(limits)


def _limits(args: argparse.Namespace, old):
    """`old` with the limits given replaced; a limit given as 0 is removed (None)."""
    from ownllm.gateway.principal import Limits

    given = {name: getattr(args, name) for name in LIMIT_FLAGS}
    kept = {n: getattr(old, n) for n in LIMIT_FLAGS}
    return Limits(**{n: (given[n] or None) if given[n] is not None else kept[n] for n in given})


def _applies(config) -> str:
    seconds = config.auth.key_cache_seconds
    return f" (running servers apply it within auth.key_cache_seconds = {seconds:g} s)"


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _limit_text(limits) -> str:
    parts = [f"{n}={getattr(limits, n)}" for n in LIMIT_FLAGS if getattr(limits, n) is not None]
    return ",".join(parts) or "unlimited"


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import closing, open_database
    from ownllm.gateway import keys
    from ownllm.gateway.principal import NO_LIMITS

    config, db = open_database(args)
    with closing(db):
        if args.action == "create":
            start = NO_LIMITS if args.unlimited else keys.DEFAULT_KEY_LIMITS
            created = keys.create_key(
                db, args.tenant, args.name, scopes=args.scopes, limits=_limits(args, start)
            )
            info = created.info
            print(
                f"Created {info.id} for tenant {info.tenant_id} (scopes: "
                f"{','.join(info.scopes)}; limits: {_limit_text(info.limits)}).\n"
                "This is the only time the key is shown; store it now:",
                file=sys.stderr,
            )
            print(created.secret)
        elif args.action == "list":
            items = keys.list_keys(db, args.tenant)
            if args.json:
                for item in items:
                    print(json.dumps(item.to_dict()))
            else:
                print(
                    f"{'ID':<22} {'TENANT':<16} {'NAME':<16} {'PREFIX':<13} {'CREATED':<17} "
                    f"{'REVOKED':<17} LIMITS"
                )
                for k in items:
                    print(
                        f"{k.id:<22} {k.tenant_id:<16} {k.name[:16]:<16} {k.prefix + '…':<13} "
                        f"{_when(k.created_at):<17} {_when(k.revoked_at):<17} "
                        f"{_limit_text(k.limits)}"
                    )
        elif args.action == "revoke":
            info = keys.revoke_key(db, args.key_id)
            print(
                f"Revoked {info.id} ({info.tenant_id}/{info.name}); running servers refuse it "
                f"within auth.key_cache_seconds ({config.auth.key_cache_seconds:g} s)."
            )
        elif args.action == "tenants":
            print(f"{'TENANT':<24} {'CREATED':<17} LIMITS")
            for t in keys.list_tenants(db):
                print(f"{t.id:<24} {_when(t.created_at):<17} {_limit_text(t.limits)}")
        elif args.action == "limits":
            if args.tenant:
                old = NO_LIMITS if args.clear else keys.get_tenant(db, args.tenant).limits
                info = keys.set_tenant_limits(db, args.tenant, _limits(args, old))
                print(f"tenant {info.id}: {_limit_text(info.limits)}{_applies(config)}")
            else:
                old = NO_LIMITS if args.clear else keys.get_key(db, args.key).limits
                info = keys.set_key_limits(db, args.key, _limits(args, old))
                print(f"key {info.id}: {_limit_text(info.limits)}{_applies(config)}")
    return 0
