"""S3 data sources and DVC remotes on S3, against a real SeaweedFS on loopback (no S3 mock)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server, s3_server  # noqa: F401  (pytest fixture)

from modelworks.data import s3
from modelworks.data.dvc import cache_path, file_md5
from modelworks.data.sources import DataResolver
from modelworks.errors import DataError
from modelworks.plan import data_resolver
from modelworks.spec import load_spec
from modelworks.testing import make_workspace, mw, write_dataset, write_pipeline, write_spec
from modelworks.workspace import Workspace

Capsys = pytest.CaptureFixture[str]
pytestmark = pytest.mark.integration


@pytest.fixture
def aws_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:  # noqa: F811
    """The server's credentials in the environment, nothing from ~/.aws or instance metadata."""
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


def s3_workspace(root: Path, server: S3Server, **data: Any) -> Workspace:
    ws = make_workspace(root, data={"endpoint_url": server.endpoint, **data})
    write_pipeline(ws)
    return ws


def s3_spec(ws: Workspace, name: str, bucket: str, **source: Any) -> Path:
    return write_spec(ws, name, "", data_source={"type": "s3", "bucket": bucket, **source})


def resolver_spec(ws: Workspace, path: Path) -> Any:
    loaded = load_spec(path)
    assert loaded.spec is not None, loaded.error
    return loaded.spec


def csv_bytes(ws: Workspace, seed: int) -> bytes:
    return write_dataset(ws, f"scratch/{seed}.csv", seed=seed).read_bytes()


def test_version_is_the_listing_and_changes_with_an_object(aws_env: S3Server) -> None:
    bucket = aws_env.bucket()
    client = aws_env.client()
    client.put_object(Bucket=bucket, Key="train/a.csv", Body=b"x\n1\n")
    client.put_object(Bucket=bucket, Key="train/b.csv", Body=b"x\n2\n")
    endpoint = s3.Endpoint(aws_env.endpoint)
    first = s3.list_source(endpoint, bucket, prefix="train/")
    again = s3.list_source(endpoint, bucket, prefix="train/")
    assert first.version == again.version
    assert [o.key for o in first.objects] == ["train/a.csv", "train/b.csv"]
    client.put_object(Bucket=bucket, Key="train/b.csv", Body=b"x\n3\n")  # same size, new ETag
    changed = s3.list_source(endpoint, bucket, prefix="train/")
    assert changed.objects[1].size == first.objects[1].size
    assert changed.version != first.version
    single = s3.list_source(endpoint, bucket, key="train/a.csv")
    assert [o.key for o in single.objects] == ["train/a.csv"]
    assert single.version != changed.version


def test_pattern_is_a_glob_on_keys_relative_to_the_prefix(aws_env: S3Server) -> None:
    bucket = aws_env.bucket()
    for key in ("d/a.csv", "d/notes.txt", "d/sub/c.csv", "other/z.csv"):
        aws_env.client().put_object(Bucket=bucket, Key=key, Body=key.encode())
    endpoint = s3.Endpoint(aws_env.endpoint)

    def keys(pattern: str) -> list[str]:
        return [
            o.key for o in s3.list_source(endpoint, bucket, prefix="d/", pattern=pattern).objects
        ]

    assert keys("*.csv") == ["d/a.csv"]
    assert keys("**/*.csv") == ["d/a.csv", "d/sub/c.csv"]
    assert keys("sub/*") == ["d/sub/c.csv"]
    with pytest.raises(DataError, match=r"has no object matching '\*\.parquet'"):
        keys("*.parquet")


def test_listing_is_bounded_by_data_max_files(aws_env: S3Server, tmp_path: Path) -> None:
    bucket = aws_env.bucket()
    for i in range(3):
        aws_env.client().put_object(Bucket=bucket, Key=f"p/{i}.csv", Body=b"1")
    ws = s3_workspace(tmp_path / "ws", aws_env, max_files=2)
    spec = resolver_spec(ws, s3_spec(ws, "bounded", bucket, prefix="p/"))
    with pytest.raises(DataError, match=rf"s3://{bucket}/p/ lists more than 2 objects"):
        DataResolver(ws).version(spec)


def test_content_is_fetched_once_per_version(aws_env: S3Server, tmp_path: Path) -> None:
    bucket = aws_env.bucket()
    ws = s3_workspace(tmp_path / "ws", aws_env)
    body = csv_bytes(ws, 1)
    aws_env.client().put_object(Bucket=bucket, Key="iris/part-0.csv", Body=body)
    aws_env.client().put_object(Bucket=bucket, Key="iris/part-1.csv", Body=body[:50])
    spec = resolver_spec(ws, s3_spec(ws, "fetched", bucket, prefix="iris/"))
    first = DataResolver(ws)
    ref = first.resolve(spec)
    assert first.fetched == 2
    assert ref.kind == "s3"
    assert ref.dataset == f"s3://{bucket}/iris/"
    assert [f.name for f in ref.files] == ["part-0.csv", "part-1.csv"]
    assert ref.files[0].read_bytes() == body
    assert ref.files[0].is_relative_to(ws.cache_dir / "s3" / ref.hash)
    second = DataResolver(ws)
    assert second.resolve(spec) == ref
    assert second.fetched == 0
    aws_env.client().put_object(Bucket=bucket, Key="iris/part-1.csv", Body=body[:60])
    third = DataResolver(ws)
    changed = third.resolve(spec)
    assert changed.hash != ref.hash
    assert third.fetched == 2
    assert changed.files[1].read_bytes() == body[:60]


def test_a_key_that_is_no_safe_file_name_is_refused(tmp_path: Path) -> None:
    # SeaweedFS refuses such keys itself; AWS S3 accepts them, so the cache path is checked.
    for key in ("p/../../escape.csv", "p/a//double.csv", "p/./dot.csv"):
        listing = s3._listing("bucket", "p/", [s3.S3Object(key, 1, "0" * 32)])
        with pytest.raises(DataError, match="cannot be a local file name"):
            s3.local_files(tmp_path, listing)
    assert not (tmp_path / "s3").exists()


def plan_errors(capsys: Capsys, ws: Workspace) -> tuple[int, str]:
    code, out, err = mw(capsys, ws, "plan", "--json")
    assert "Traceback" not in out + err
    reasons = [r for m in json.loads(out)["models"] if m["action"] == "error" for r in m["reasons"]]
    return code, " ".join(reasons)


def test_missing_bucket_and_credentials_are_clear_errors(
    aws_env: S3Server, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = s3_workspace(tmp_path / "ws", aws_env)
    s3_spec(ws, "nobucket", "mw-no-such-bucket", prefix="x/")
    code, reasons = plan_errors(capsys, ws)
    assert code == 1
    assert f"S3 bucket 'mw-no-such-bucket' does not exist at {aws_env.endpoint}" in reasons

    bucket = aws_env.bucket()
    aws_env.client().put_object(Bucket=bucket, Key="x/a.csv", Body=b"1")
    (ws.models_dir / "nobucket.json").unlink()
    s3_spec(ws, "nocreds", bucket, prefix="x/")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, reasons = plan_errors(capsys, ws)
    assert code == 1
    assert f"S3 bucket {bucket!r} at {aws_env.endpoint}: no S3 credentials found" in reasons
    assert "AWS_ACCESS_KEY_ID" in reasons

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    code, reasons = plan_errors(capsys, ws)
    assert code == 1
    assert f"S3 bucket {bucket!r} at {aws_env.endpoint}: access denied" in reasons
    assert "wrong-secret" not in reasons


def test_unreachable_endpoint_names_it(aws_env: S3Server, tmp_path: Path) -> None:
    from s3_server import _free_ports

    dead = f"http://127.0.0.1:{_free_ports(1)[0]}"
    with pytest.raises(DataError, match=f"cannot reach the S3 endpoint {dead}"):
        s3.list_source(s3.Endpoint(dead), "mw-some-bucket", prefix="p/")


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` sees when not installed
    with pytest.raises(DataError, match=r"pip install 'modelworks\[s3\]'"):
        s3.client(s3.Endpoint("http://127.0.0.1:9", "eu-west-1"))


def test_sealed_secret_credentials(
    aws_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelworks.security.keys import sealing_keys, secrets_dir
    from modelworks.security.secrets import seal

    bucket = aws_env.bucket()
    aws_env.client().put_object(Bucket=bucket, Key="k/data.csv", Body=b"a\n1\n")
    ws = s3_workspace(tmp_path / "ws", aws_env)
    creds = aws_env.env()
    text = f"AWS_ACCESS_KEY_ID={creds['AWS_ACCESS_KEY_ID']}\n"
    text += f"AWS_SECRET_ACCESS_KEY={creds['AWS_SECRET_ACCESS_KEY']}\n"
    seal("s3-creds", text.encode(), sealing_keys(ws)[1], secrets_dir(ws))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    spec = resolver_spec(
        ws, s3_spec(ws, "sealed", bucket, key="k/data.csv", credentials="s3-creds")
    )
    ref = data_resolver(ws).resolve(spec)
    assert ref.files[0].read_bytes() == b"a\n1\n"
    bad = resolver_spec(ws, s3_spec(ws, "unsealed", bucket, key="k/data.csv", credentials="nope"))
    with pytest.raises(Exception, match="sealed secret 'nope' not found"):
        data_resolver(ws).resolve(bad)


def test_mw_apply_of_a_model_whose_data_is_on_s3(
    aws_env: S3Server, tmp_path: Path, capsys: Capsys
) -> None:
    bucket = aws_env.bucket()
    ws = s3_workspace(tmp_path / "ws", aws_env)
    aws_env.client().put_object(Bucket=bucket, Key="churn/train.csv", Body=csv_bytes(ws, 3))
    s3_spec(ws, "churn-s3", bucket, prefix="churn/", pattern="*.csv")
    code, out, err = mw(capsys, ws, "apply", "-j", "1", "--json")
    assert "Traceback" not in err
    result = json.loads(out)
    assert code == 0, result
    assert "churn-s3" in json.dumps(result["trained"])
    assert result["summary"]["trained"] == 1
    assert not result["errors"]
    fetched = sorted(p.name for p in (ws.cache_dir / "s3").iterdir())
    assert len(fetched) == 1
    stamp = (ws.cache_dir / "s3" / fetched[0]).stat().st_mtime_ns

    code, out, _err = mw(capsys, ws, "apply", "-j", "1", "--json")
    assert code == 0
    assert json.loads(out)["summary"]["trained"] == 0
    assert sorted(p.name for p in (ws.cache_dir / "s3").iterdir()) == fetched
    assert (ws.cache_dir / "s3" / fetched[0]).stat().st_mtime_ns == stamp

    aws_env.client().put_object(Bucket=bucket, Key="churn/train.csv", Body=csv_bytes(ws, 4))
    code, out, _err = mw(capsys, ws, "plan", "--json")
    (model,) = json.loads(out)["models"]
    assert model["action"] == "update"
    assert any(r.startswith("data ") for r in model["reasons"])


def test_dvc_remote_on_s3_push_and_fetch(aws_env: S3Server, tmp_path: Path, capsys: Capsys) -> None:
    bucket = aws_env.bucket()
    ws = s3_workspace(tmp_path / "ws", aws_env, remote=f"s3://{bucket}/dvcstore")
    data = write_dataset(ws, "data/iris.csv", seed=5)
    md5 = file_md5(data)
    code, out, err = mw(capsys, ws, "data", "add", str(data), "--json")
    assert code == 0, err
    key = f"dvcstore/files/md5/{md5[:2]}/{md5[2:]}"
    assert json.loads(out)["remote"] == f"s3://{bucket}/{key}"
    remote = aws_env.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert remote == data.read_bytes()

    # A fresh clone: the pointer is committed, the content is only in the remote.
    cached = cache_path(ws.cache_dir, md5)
    cached.chmod(0o644)
    cached.unlink()
    spec = resolver_spec(ws, write_spec(ws, "iris-remote", "data/iris.csv"))
    ref = DataResolver(ws).resolve(spec)
    assert ref.files == (cached,)
    assert cached.read_bytes() == data.read_bytes()

    # A corrupted remote copy is refused by its md5, and nothing lands in the cache.
    cached.chmod(0o644)
    cached.unlink()
    aws_env.client().put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.raises(DataError, match=f"s3://{bucket}/{key}: content hashes to"):
        DataResolver(ws).resolve(spec)
    assert not cached.exists()


def test_dvc_remote_push_failure_writes_no_pointer(
    aws_env: S3Server, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = s3_workspace(tmp_path / "ws", aws_env, remote="s3://mw-missing-remote/store")
    data = write_dataset(ws, "data/x.csv")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _out, err = mw(capsys, ws, "data", "add", str(data))
    assert code != 0
    assert "Traceback" not in err
    assert "mw-missing-remote" in err
    assert aws_env.endpoint in err
    assert "access denied" in err
    assert not (ws.root / "data" / "x.csv.dvc").exists()
