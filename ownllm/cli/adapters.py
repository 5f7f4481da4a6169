"""`ownllm adapters list|show|import|compose|export|delete`: the adapter registry from a shell.

Works on the data dir and database directly (no server needed); a running
server sees the changes at once because it reads the same registry. The CLI
acts as the operator: it sees every tenant's adapters, and `--tenant` picks
the owner of what it creates (default: the admin, tenant `@admin`).

    ownllm adapters import ./my-lora --name support-tone
    ownllm adapters compose --name mix --method ties --density 0.5 a:0.7 b:0.3
    ownllm adapters export mix --format gguf --type q8_0 -o mix.gguf
"""

from __future__ import annotations

import argparse
import json
import time

from ownllm.cli.common import add_config_arguments, config_from_args, fail

ACTIONS = ("list", "show", "import", "compose", "export", "delete")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="list adapters as a table")
    p.add_argument("--tenant", help="only this tenant's adapters")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("show", help="show one adapter (name or id) with its lineage")
    p.add_argument("adapter")
    p = sub.add_parser("import", help="import a PEFT adapter directory or .tar.gz/.zip archive")
    p.add_argument("path")
    p.add_argument("--name", required=True, help="model name clients will use")
    p.add_argument("--tenant", help="owner tenant (default: the admin, @admin)")
    p.add_argument("--public", action="store_true", help="usable by every tenant")
    p.add_argument("--model", help="base model to check against (default: the configured one)")
    p = sub.add_parser("compose", help="compose adapters into a new one")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER[:WEIGHT]", help="name or id, weight 1")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--method", default="cat", choices=("cat", "linear", "ties", "dare_linear", "dare_ties")
    )
    p.add_argument("--density", type=float, help="fraction kept (ties, dare_*)")
    p.add_argument("--seed", type=int, default=0, help="random seed of dare_* (default 0)")
    p.add_argument("--majority-sign-method", default="total", choices=("total", "frequency"))
    p.add_argument("--tenant", help="owner tenant (default: the admin, @admin)")
    p.add_argument("--public", action="store_true")
    p = sub.add_parser("export", help="export as a merged HF directory, merged GGUF or GGUF LoRA")
    p.add_argument("adapter")
    p.add_argument("--format", default="hf", choices=("hf", "gguf", "gguf-lora"))
    p.add_argument("--type", default="f16", choices=("f16", "q8_0"), help="GGUF tensor type")
    p.add_argument("-o", "--output", required=True, help="output directory or .gguf file")
    p.add_argument("--model", help="base model (default: the configured one)")
    p = sub.add_parser("delete", help="delete an adapter (its row and files)")
    p.add_argument("adapter")


def _parse_part(text: str) -> tuple[str, float]:
    ref, sep, weight = text.rpartition(":")
    if sep:
        try:
            return ref, float(weight)
        except ValueError:
            pass  # a name with colons (ft:…) and no weight
    return text, 1.0


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)


def table(records: list) -> str:
    """The adapters as an aligned text table."""
    header = ("NAME", "ID", "OWNER", "SOURCE", "RANK", "BASE", "PARENTS", "SIZE", "CREATED")
    rows = [
        (
            r.name,
            r.id,
            r.tenant_id + (" (public)" if r.is_public else ""),
            r.source,
            str(r.rank),
            r.base_model,
            str(len(r.parents)) if r.parents else "-",
            _size(r.size_bytes),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at)),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def _base(config, model: str | None):
    from ownllm.adapters.operations import BaseModel
    from ownllm.models import prepare_model, resolve_model

    source = resolve_model(model or config.model.model, "" if model else config.model.name)
    prepared = prepare_model(source, config.store.home)
    return BaseModel(id=prepared.id, path=prepared.path, sha256=prepared.weights_sha256)


def run(args: argparse.Namespace) -> int:
    from ownllm.adapters import operations, registry
    from ownllm.errors import OwnLLMError
    from ownllm.gateway.principal import ADMIN_TENANT, Principal
    from ownllm.models.catalog import ModelLoadError
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database, DatabaseError

    try:
        config = config_from_args(args, {})
        data_dir = DataDir(config.store.home).ensure()
        db = Database.open(config.store.url)
    except (ValueError, DatabaseError) as e:
        return fail(str(e))
    operator = Principal(tenant_id=getattr(args, "tenant", None) or ADMIN_TENANT, is_admin=True)
    try:
        if args.action == "list":
            records = registry.list_adapters(db, operator)
            if args.tenant:
                records = [r for r in records if r.tenant_id == args.tenant]
            if args.json:
                print(json.dumps([r.to_dict() for r in records], indent=2))
            else:
                print(table(records) if records else "no adapters")
        elif args.action == "show":
            print(json.dumps(registry.get_adapter(db, operator, args.adapter).to_dict(), indent=2))
        elif args.action == "import":
            record = operations.import_adapter(
                db,
                data_dir,
                operator,
                args.path,
                name=args.name,
                base=_base(config, args.model),
                max_rank=config.engine.max_lora_rank,
                is_public=args.public,
            )
            print(table([record]))
        elif args.action == "compose":
            record = operations.compose_adapters(
                db,
                data_dir,
                operator,
                name=args.name,
                adapters=[_parse_part(p) for p in args.adapters],
                method=args.method,
                density=args.density,
                seed=args.seed,
                majority_sign_method=args.majority_sign_method,
                max_rank=config.engine.max_lora_rank,
                is_public=args.public,
            )
            print(table([record]))
        elif args.action == "export":
            path = operations.export_adapter(
                db,
                data_dir,
                operator,
                args.adapter,
                fmt=args.format,
                output=args.output,
                base=_base(config, args.model),
                gguf_type=args.type,
            )
            print(f"exported {args.adapter} to {path}")
        elif args.action == "delete":
            record = registry.delete_adapter(db, data_dir, operator, args.adapter)
            print(f"deleted {record.name} ({record.id})")
    except (OwnLLMError, ModelLoadError) as e:
        return fail(getattr(e, "message", None) or str(e), code=1)
    finally:
        db.close()
    return 0
