"""`ownllm keys`, `ownllm usage`, `ownllm cost`, and `ownllm serve` refusing a public
address without keys."""

from __future__ import annotations

import json

import pytest

from ownllm.cli import main
from ownllm.gateway.auth import hash_key
from ownllm.gateway.usage import UsageLedger, UsageRow
from ownllm.store.db import Database


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_prints_the_key_once_and_list_never(tmp_path, capsys):
    d = str(tmp_path)
    code, out, err = cli(
        capsys,
        "keys",
        "create",
        "--data-dir",
        d,
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--scopes",
        "inference,files",
        "--rpm",
        "10",
        "--monthly-tokens",
        "1000000",
    )
    secret = out.strip()
    assert code == 0 and secret.startswith("sk-") and "only time" in err
    assert "rpm=10" in err and "monthly_tokens=1000000" in err
    code, out, _ = cli(capsys, "keys", "list", "--data-dir", d, "--json")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert secret not in out and row["tenant_id"] == "acme" and row["rpm"] == 10
    code, out, _ = cli(
        capsys, "keys", "limits", "--data-dir", d, "--tenant", "acme", "--tpm", "5000"
    )
    assert code == 0 and "tpm=5000" in out
    code, out, _ = cli(capsys, "keys", "revoke", row["id"], "--data-dir", d)
    assert code == 0 and "Revoked" in out
    code, out, _ = cli(capsys, "keys", "list", "--data-dir", d)
    assert row["id"] in out and "unlimited" not in out.splitlines()[1]
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    from ownllm.gateway.keys import get_key

    assert get_key(db, row["id"]).revoked_at is not None
    db.close()
    assert hash_key(secret)  # stored hashed: see tests/gateway/test_auth.py


def test_keys_bad_input_is_one_line(tmp_path, capsys):
    code, _, err = cli(
        capsys, "keys", "create", "--data-dir", str(tmp_path), "--tenant", "a:b", "--name", "ci"
    )
    assert code == 2 and err.startswith("ownllm: error: Invalid tenant name")
    code, _, err = cli(capsys, "keys", "revoke", "key-nope", "--data-dir", str(tmp_path))
    assert code == 2 and "No API key" in err
    code, _, err = cli(
        capsys, "keys", "create", "--data-dir", str(tmp_path), "--tenant", "default", "--name", "ci"
    )
    assert code == 2 and err.startswith("ownllm: error: Tenant name 'default' is reserved")


def test_keys_create_limits_a_new_key_by_default_and_opts_out_explicitly(tmp_path, capsys):
    d = str(tmp_path)

    def create(name: str, *flags: str) -> str:
        code, _, err = cli(
            capsys, "keys", "create", "--data-dir", d, "--tenant", "acme", "--name", name, *flags
        )
        assert code == 0, err
        return err

    assert "limits: rpm=60,tpm=100000,max_concurrent=4)" in create("plain")
    assert "limits: rpm=60,tpm=100000)" in create("zero", "--max-concurrent", "0")
    assert "limits: unlimited)" in create("open", "--unlimited")
    assert "limits: rpm=5)" in create("five", "--unlimited", "--rpm", "5")
    _, out, _ = cli(capsys, "keys", "list", "--data-dir", d, "--json")
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    limits = {n: (r["rpm"], r["tpm"], r["max_concurrent"]) for n, r in rows.items()}
    assert limits == {
        "plain": (60, 100000, 4),
        "zero": (60, 100000, None),
        "open": (None, None, None),
        "five": (5, None, None),
    }
    code, out, _ = cli(
        capsys, "keys", "limits", "--data-dir", d, "--key", rows["plain"]["id"], "--tpm", "0"
    )
    assert code == 0 and "rpm=60,max_concurrent=4 " in out  # 0 removes a limit later too
    with pytest.raises(SystemExit):
        main(["keys", "create", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "limited to rpm=60,tpm=100000,max_concurrent=4 unless told otherwise" in help_text


def test_usage_and_cost_read_the_ledger(tmp_path, capsys):
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    ledger = UsageLedger(db)
    for tenant, model in (("acme", "tiny"), ("acme", "ft:tiny:acme:x:1"), ("globex", "tiny")):
        ledger.record(
            UsageRow(
                request_id="r",
                tenant_id=tenant,
                key_id="key-1",
                endpoint="chat.completions",
                model=model,
                status="ok",
                prompt_tokens=1000,
                completion_tokens=500,
            )
        )
    ledger.close()
    db.close()
    d = str(tmp_path)
    code, out, _ = cli(capsys, "usage", "--data-dir", d, "--by", "model", "--tenant", "acme")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("MODEL") and any(
        line.startswith("ft:tiny:acme:x:1") for line in lines
    )
    assert lines[-1].split()[:2] == ["total", "2"]
    code, out, _ = cli(capsys, "usage", "--data-dir", d, "--by", "tenant", "--json")
    assert {json.loads(x)["tenant"] for x in out.splitlines()} == {"acme", "globex"}
    code, out, _ = cli(capsys, "cost", "--data-dir", d, "--hardware", "h100")
    assert code == 0 and "3 requests" in out and "gpt-4o-mini" in out and "as of" in out
    code, out, err = cli(
        capsys,
        "cost",
        "--data-dir",
        d,
        "--scenario",
        "users=1000000,requests_per_user=10,input_tokens=400,output_tokens=200",
    )
    # no capacity run, no engine busy time: the preset's figure, called assumed
    assert code == 0 and "ASSUMED" in out and "ownllm bench capacity" in out
    code, out, _ = cli(
        capsys,
        "cost",
        "--data-dir",
        d,
        "--throughput",
        "5000",
        "--scenario",
        "users=1000000,requests_per_user=10,input_tokens=400,output_tokens=200",
    )
    assert code == 0 and "given with --throughput" in out and "per year" in out


def test_serve_refuses_public_address_without_keys(tmp_path, capsys):
    code, _, err = cli(
        capsys,
        "serve",
        "--host",
        "0.0.0.0",
        "--data-dir",
        str(tmp_path),
        "--model",
        str(tmp_path / "not-loaded-before-the-check"),
    )
    assert code == 2
    assert "refusing to listen on 0.0.0.0" in err and "ownllm keys create" in err


def test_cost_prices_batch_lines_and_says_every_price_is_unconfirmed(tmp_path, capsys):
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    ledger = UsageLedger(db)
    for k, batch_id in enumerate((None, "batch_1", "batch_1")):
        ledger.record(
            UsageRow(
                request_id=f"r{k}",
                tenant_id="acme",
                key_id="key-1",
                endpoint="chat.completions",
                model="tiny",
                status="ok",
                prompt_tokens=1000,
                completion_tokens=500,
                batch_id=batch_id,
            )
        )
    ledger.close()
    db.close()
    code, out, _ = cli(capsys, "cost", "--data-dir", str(tmp_path))
    assert code == 0
    assert "Batch lines (/v1/batches): 2 lines of 1 batch, 2.0k input + 1.0k output" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "batch saved" in line)
    row = next(line for line in lines[header:] if line.startswith("gpt-4o-mini "))
    # 2,000 in + 1,000 out at the (unconfirmed) batch price 0.075/0.30, and list 0.15/0.60
    assert row.split()[1:3] == ["$0.000450", "$0.000900"] and "[unconfirmed]" in row
    assert "UNCONFIRMED prices" in out
    assert "https://platform.openai.com/docs/guides/batch  (gpt-4o-mini" in out
    code, out, _ = cli(
        capsys,
        "cost",
        "--data-dir",
        str(tmp_path),
        "--scenario",
        "users=10,requests_per_user=1,input_tokens=200,output_tokens=100",
    )
    row = next(line for line in out.splitlines() if line.startswith("gpt-4.1 "))
    # 2,000 in + 1,000 out a day at batch 1.00/4.00 per 1M: $0.006/day, $2.19/year
    assert row.split()[4:6] == ["$2.19", "[unconfirmed]"]
