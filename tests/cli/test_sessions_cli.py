"""`agentrt sessions ...` and `agentrt resume` on real sessions saved by a real Engine.

Every test gets an empty AGENTRT_HOME/AGENTRT_DB in tmp_path (tests/conftest.py); the
tiny model (with a byte-level tokenizer) is saved to a folder once per module.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from agentrt import Engine
from agentrt.cli.main import cli
from agentrt.errors import CheckpointError, SessionError
from agentrt.sessions import SessionStore, open_catalog
from agentrt.sessions.chain import chain_of
from tests.runtime.tokenizer_fixture import save_byte_model

PROBE = [5, 6, 7]
LONG = "first line\n" + "x" * 200


def invoke(*args: str, input: str | None = None) -> Result:
    """Run the production CLI in-process."""
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny qneuron DMS model with a byte-level tokenizer, saved as an HF folder."""
    return save_byte_model(tmp_path_factory.mktemp("model"))


def engine(model_dir: Path) -> Engine:
    """An engine on the test home (AGENTRT_HOME/AGENTRT_DB from the autouse fixture)."""
    return Engine.from_pretrained(model_dir, device="cpu", num_blocks=2000, block_size=4)


def save_session(model_dir: Path, name: str, *, saves: int = 1) -> None:
    """Prefill + generate + save `saves` times, and record two messages."""
    eng = engine(model_dir)
    try:
        s = eng.new_session(name, seed=3)
        s.prefill(list(range(3, 50)))
        list(s.generate(4))
        eng.save(s)
        for n in range(1, saves):
            s.prefill([10 + n, 11 + n])
            eng.save(s)
        store = eng.persistence.store
        store.add_message(s.db_id, "user", LONG, token_start=0, token_end=47)
        store.add_message(s.db_id, "assistant", "ok", token_start=47, token_end=51)
    finally:
        eng.close()


def next_logits(model_dir: Path, name: str) -> torch.Tensor:
    """Logits [V] after feeding PROBE to the reopened session (nothing is saved)."""
    eng = engine(model_dir)
    try:
        return eng.open_session(name).prefill(PROBE)
    finally:
        eng.close()


def store() -> SessionStore:
    """A store on the test catalog."""
    return SessionStore(open_catalog(os.environ["AGENTRT_DB"]))


def files_under(home: Path) -> set[Path]:
    """Every file under the checkpoint folder (relative to it)."""
    root = home / "checkpoints"
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


# -- ls / show ---------------------------------------------------------------------------


def test_ls_on_a_fresh_home_is_friendly_and_creates_nothing(agentrt_home: Path) -> None:
    result = invoke("sessions", "ls")
    assert result.exit_code == 0, result.output
    assert "No sessions yet" in result.stdout
    assert json.loads(invoke("sessions", "ls", "--json").stdout) == []
    assert not agentrt_home.exists()


def test_ls_and_show_in_text_and_json(model_dir: Path, agentrt_home: Path) -> None:
    save_session(model_dir, "alpha", saves=2)
    result = invoke("sessions", "ls")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "MODEL", "TOKENS", "KV", "CR", "UPDATED", "STATUS"]
    assert row.split()[0] == "alpha" and row.split()[-1] == "saved"  # closed after its save
    (listed,) = json.loads(invoke("sessions", "ls", "--json").stdout)
    info = store().get_session("alpha")
    assert listed["name"] == "alpha" and listed["tokens"] == info.tokens > 0
    assert listed["kv_bytes"] == info.kv_bytes > 0 and listed["model"] == str(model_dir)

    text = invoke("sessions", "show", "alpha")
    assert text.exit_code == 0, text.output
    assert "x" * 80 not in text.stdout and "(211 chars)" in text.stdout  # first 80 chars only
    assert "layer   0" in text.stdout and "layer   1" in text.stdout
    assert "x" * 200 in invoke("sessions", "show", "alpha", "--full").stdout

    report = json.loads(invoke("sessions", "show", "alpha", "--json").stdout)
    assert [m["role"] for m in report["messages"]] == ["user", "assistant"]
    assert report["messages"][0]["truncated"] and len(report["messages"][0]["content"]) == 80
    assert len(report["checkpoints"]) == 2 and not any(c["missing"] for c in report["checkpoints"])
    latest = report["checkpoints"][-1]
    layers = report["layers"]
    assert [layer["layer"] for layer in layers] == [0, 1]
    # per-layer slots add up to the checkpoint's, and tokens·streams/slots matches its CR
    assert sum(layer["slots"] for layer in layers) == latest["slots"]
    streams = 2 * 2  # layers × KV heads of the tiny model
    assert latest["tokens"] * streams / latest["slots"] == pytest.approx(
        latest["compression_ratio"]
    )
    for layer in layers:
        assert layer["compression_ratio"] == pytest.approx(latest["tokens"] * 2 / layer["slots"])


def test_unknown_session_is_a_session_error_with_close_names(model_dir: Path) -> None:
    missing = invoke("sessions", "show", "nobody")  # no catalog yet
    assert missing.exit_code == SessionError.exit_code, missing.output
    assert "no session named 'nobody'" in missing.stderr
    save_session(model_dir, "alpha")
    for args in (["sessions", "show", "alpah"], ["sessions", "rm", "alpah", "--yes"]):
        result = invoke(*args)
        assert result.exit_code == SessionError.exit_code == 8, result.output
        assert "did you mean 'alpha'?" in result.stderr and "Traceback" not in result.output


# -- rm ----------------------------------------------------------------------------------


def test_rm_asks_then_deletes_rows_and_files(model_dir: Path, agentrt_home: Path) -> None:
    save_session(model_dir, "alpha", saves=2)
    save_session(model_dir, "keep")
    files = {agentrt_home / c.file for c in store().checkpoints(store().get_session("alpha"))}
    assert len(files) == 2 and all(f.is_file() for f in files)

    refused = invoke("sessions", "rm", "alpha")  # no stdin: the confirmation aborts
    assert refused.exit_code == 1 and store().get_session("alpha")
    assert all(f.is_file() for f in files)

    result = invoke("sessions", "rm", "alpha", "--yes")
    assert result.exit_code == 0, result.output
    assert [s.name for s in store().list_sessions()] == ["keep"]
    assert not any(f.exists() for f in files) and not next(iter(files)).parent.exists()

    kept = {agentrt_home / c.file for c in store().checkpoints(store().get_session("keep"))}
    result = invoke("sessions", "rm", "keep", "--keep-checkpoints", input="y\n")
    assert result.exit_code == 0, result.output
    assert store().list_sessions() == [] and all(f.is_file() for f in kept)


def test_rm_refuses_a_session_open_in_an_engine(model_dir: Path) -> None:
    save_session(model_dir, "alpha")
    eng = engine(model_dir)
    try:
        eng.open_session("alpha")
        result = invoke("sessions", "rm", "alpha", "--yes")
        assert result.exit_code == SessionError.exit_code, result.output
        assert "open in another agentrt process" in result.stderr
    finally:
        eng.close()
    assert invoke("sessions", "rm", "alpha", "--yes").exit_code == 0


# -- fork / export / import ----------------------------------------------------------------


def test_fork_shares_the_chain_and_both_reopen_identically(
    model_dir: Path, agentrt_home: Path
) -> None:
    save_session(model_dir, "alpha", saves=2)
    result = invoke("sessions", "fork", "alpha", "beta")
    assert result.exit_code == 0, result.output
    st = store()
    src, dst = st.latest_checkpoint("alpha"), st.latest_checkpoint("beta")
    assert dst is not None and src is not None and dst.file != src.file
    assert (dst.fingerprint, dst.tokens, dst.slots) == (src.fingerprint, src.tokens, src.slots)
    # the fork's one checkpoint is an empty delta on alpha's newest: it costs what it adds
    assert [c.kind for c in st.checkpoints("beta")] == ["incremental"]
    assert dst.parent_id == src.id and dst.size_bytes < 20_000
    assert [c.id for c in st.lineage("beta")] == [c.id for c in st.checkpoints("alpha")] + [dst.id]
    assert [m.content for m in st.messages("beta")] == [m.content for m in st.messages("alpha")]
    assert oct((agentrt_home / dst.file).stat().st_mode & 0o777) == "0o600"
    torch.testing.assert_close(next_logits(model_dir, "beta"), next_logits(model_dir, "alpha"))

    taken = invoke("sessions", "fork", "alpha", "beta")
    assert taken.exit_code == SessionError.exit_code and "already exists" in taken.stderr
    verified = invoke("sessions", "fork", "alpha", "gamma", "--model", str(model_dir))
    assert verified.exit_code == 0, verified.output
    want = next_logits(model_dir, "beta")
    # retention and removal of alpha keep what the forks build on
    assert invoke("sessions", "gc", "--keep", "1").exit_code == 0
    assert {c.id for c in store().checkpoints("alpha")} >= {src.id}
    removed = invoke("sessions", "rm", "alpha", "--yes")
    assert removed.exit_code == 0 and "that forks build on now belong to them" in removed.output
    assert invoke("sessions", "gc", "--verify").exit_code == 0
    kinds = sorted([c.kind for c in store().lineage(n)] for n in ("beta", "gamma"))
    assert kinds == [["full", "incremental", "incremental"]] * 2
    torch.testing.assert_close(next_logits(model_dir, "beta"), want)
    torch.testing.assert_close(next_logits(model_dir, "gamma"), want)


def test_export_then_import_as_a_copy_reopens_identically(
    model_dir: Path, agentrt_home: Path, tmp_path: Path
) -> None:
    save_session(model_dir, "alpha", saves=2)
    archive = tmp_path / "out" / "alpha.tar.gz"
    result = invoke("sessions", "export", "alpha", str(archive))
    assert result.exit_code == 0, result.output
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    assert invoke("sessions", "export", "alpha", str(archive)).exit_code == 2  # no --force

    clash = invoke("sessions", "import", str(archive))
    assert clash.exit_code == SessionError.exit_code and "--as" in clash.stderr
    result = invoke("sessions", "import", str(archive), "--as", "copy")
    assert result.exit_code == 0, result.output
    st = store()
    assert [c.sha256 for c in st.checkpoints("copy")] == [c.sha256 for c in st.checkpoints("alpha")]
    assert [m.content for m in st.messages("copy")] == [LONG, "ok"]
    blob = agentrt_home / st.checkpoints("copy")[-1].file
    assert oct(blob.stat().st_mode & 0o777) == "0o600"
    assert oct(blob.parent.stat().st_mode & 0o777) == "0o700"
    assert st.get_session("copy").tokens == st.get_session("alpha").tokens
    torch.testing.assert_close(next_logits(model_dir, "copy"), next_logits(model_dir, "alpha"))


def _rewrite(archive: Path, out: Path, change_blob: bool) -> None:
    """Copy a session archive, flipping one byte of its last blob (manifest unchanged)."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        members = src.getmembers()
        for member in members:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if change_blob and member is members[-1]:
                data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
            dst.addfile(member, io.BytesIO(data))


def test_a_tampered_or_broken_archive_is_refused_and_nothing_is_written(
    model_dir: Path, agentrt_home: Path, tmp_path: Path
) -> None:
    save_session(model_dir, "alpha")
    archive = tmp_path / "alpha.tar.gz"
    assert invoke("sessions", "export", "alpha", str(archive)).exit_code == 0
    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(archive, tampered, change_blob=True)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    before = files_under(agentrt_home)
    for bad in (tampered, truncated, garbage):
        result = invoke("sessions", "import", str(bad), "--as", "evil")
        assert result.exit_code == CheckpointError.exit_code, (bad.name, result.output)
        assert "nothing was imported" in result.stderr
        assert [s.name for s in store().list_sessions()] == ["alpha"]
        assert files_under(agentrt_home) == before


# -- gc ----------------------------------------------------------------------------------


def test_gc_removes_orphans_and_temp_files_and_marks_lost_blobs(
    model_dir: Path, agentrt_home: Path
) -> None:
    save_session(model_dir, "alpha", saves=2)
    st = store()
    first, latest = st.checkpoints("alpha")
    folder = (agentrt_home / latest.file).parent
    orphan = agentrt_home / "checkpoints" / "gone-session" / "old.safetensors"
    orphan.parent.mkdir()
    orphan.write_bytes(b"x" * 100)
    stale = folder / ".tmp-1234-60.safetensors-abcdef"
    stale.write_bytes(b"half")
    (agentrt_home / first.file).unlink()

    dry = invoke("sessions", "gc", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert orphan.exists() and stale.exists() and not st.checkpoints("alpha")[0].missing
    assert "would remove" in dry.stdout

    result = invoke("sessions", "gc")
    assert result.exit_code == 0, result.output
    assert not orphan.exists() and not orphan.parent.exists() and not stale.exists()
    assert [c.missing for c in st.checkpoints("alpha")] == [True, False]
    assert (agentrt_home / latest.file).is_file()
    assert "MISSING" in invoke("sessions", "show", "alpha").stdout
    assert "1 orphaned file, 1 temp file removed, 1 checkpoint marked missing" in result.stdout


def test_gc_keep_prunes_old_checkpoints(model_dir: Path, agentrt_home: Path) -> None:
    save_session(model_dir, "alpha", saves=3)
    st = store()
    old = st.checkpoints("alpha")
    assert len(old) == 3
    result = invoke("sessions", "gc", "--keep", "1")
    assert result.exit_code == 0, result.output
    # the newest restore point stays with the links of its chain (down to its full one)
    chain = chain_of(old, old[-1])
    left = st.checkpoints("alpha")
    assert [c.id for c in left] == [c.id for c in chain] and left[0].kind == "full"
    assert all((agentrt_home / c.file).is_file() for c in left)
    assert not any((agentrt_home / c.file).exists() for c in old if c not in chain)
    assert invoke("sessions", "gc", "--keep", "0").exit_code == 2


# -- resume ------------------------------------------------------------------------------


def test_resume_continues_exactly_and_saves_a_new_checkpoint(model_dir: Path) -> None:
    save_session(model_dir, "alpha")
    eng = engine(model_dir)  # the twin: same continuation in-process, never saved
    try:
        s = eng.open_session("alpha")
        s.prefill(eng.tokenizer.encode("hello world", add_special_tokens=False))
        want = "".join(s.generate_text(6))
        fed = len(s.tokens)
    finally:
        eng.close()
    before = store().checkpoints("alpha")
    args = ["resume", "alpha", "--prompt", "hello world", "-n", "6", "--kv-budget", "8MiB"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout == want + "\n"
    assert "saved session 'alpha'" in result.stderr
    st = store()
    after = st.checkpoints("alpha")
    assert len(after) == len(before) + 1 and after[-1].tokens > before[-1].tokens
    assert after[-1].tokens == fed
    user, assistant = st.messages("alpha")[-2:]
    assert (user.role, user.content, assistant.role, assistant.content) == (
        "user",
        "hello world",
        "assistant",
        want,
    )
    assert st.get_session("alpha").status == "saved"


def test_resume_unknown_session_and_unusable_model(model_dir: Path, tmp_path: Path) -> None:
    result = invoke("resume", "nobody")
    assert result.exit_code == SessionError.exit_code and "no session named" in result.stderr
    save_session(model_dir, "alpha")
    with_other = invoke("resume", "alpha", "--model", str(tmp_path / "nowhere"), "-n", "1")
    assert with_other.exit_code == 3, with_other.output  # ModelLoadError


def test_show_marks_deleted_and_corrupt_checkpoints_missing(
    model_dir: Path, agentrt_home: Path
) -> None:
    save_session(model_dir, "alpha", saves=3)
    first, middle, newest = store().checkpoints("alpha")
    assert [c.kind for c in (first, middle, newest)] == ["full", "incremental", "incremental"]
    path = agentrt_home / newest.file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    result = invoke("sessions", "show", "alpha")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if middle.id[:8] in line]
    assert lines and "MISSING" not in lines[0]
    assert sum("MISSING" in line for line in result.stdout.splitlines()) == 1
    assert "newest checkpoint (3) is unusable" in result.stderr
    report = json.loads(invoke("sessions", "show", "alpha", "--json").stdout)
    assert [c["missing"] for c in report["checkpoints"]] == [False, False, True]
    assert report["layers"] and sum(x["slots"] for x in report["layers"]) == middle.slots
    refused = invoke("resume", "alpha", "--model", str(model_dir), "-n", "0")
    assert refused.exit_code == 4 and "--checkpoint 2" in refused.output
    assert "link 3 of 3" in refused.output  # the chain names its broken link
    # without its full checkpoint no delta of the chain can be restored
    (agentrt_home / first.file).unlink()
    report = json.loads(invoke("sessions", "show", "alpha", "--json").stdout)
    assert [c["missing"] for c in report["checkpoints"]] == [True, True, True]
