"""``neonet.run.provenance``: one record beside each output says whether it is current, in one message format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neonet.errors import NeonetError
from neonet.run.provenance import (
    UNRECORDED,
    FileRecord,
    Outdated,
    OutOfDateError,
    Provenance,
    UnreadableRecordError,
    check_current,
    differences,
    read_provenance,
)


def _file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def record(tmp_path: Path) -> Provenance:
    ckpt = _file(tmp_path / "runs/x/controlnet/fold0/checkpoints/best.ckpt", "weights v1")
    return Provenance(
        settings={"spacing": (1.0, 1.0, 2.0), "sampler": "ddim", "aug": {"degrees": 10.0, "flip": [0]}},
        inputs={"controlnet checkpoint": FileRecord.of(ckpt)},
        extra={"created": "today", "n": 3},
    )


def test_record_round_trip(tmp_path: Path, record: Provenance) -> None:
    path = tmp_path / "out" / "record.json"
    assert record.write(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["provenance"] == 1 and data["created"] == "today" and data["settings"]["spacing"] == [1.0, 1.0, 2.0]
    assert data["inputs"]["controlnet checkpoint"]["sha256"] == record.inputs["controlnet checkpoint"].sha256
    back = read_provenance(path, "the output")
    assert back == record  # tuples were stored as lists on both sides
    assert differences(back, record) == []
    assert not record.write(path, only_if_changed=True)  # the same record is not rewritten
    assert read_provenance(tmp_path / "none.json", "the output") is None
    with pytest.raises(ValueError, match="extra fields"):
        Provenance(extra={"settings": 1})


def test_changed_setting_and_input_are_reported_in_one_format(
    tmp_path: Path, record: Provenance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "out" / "record.json"
    record.write(path)
    ckpt = Path(record.inputs["controlnet checkpoint"].path)
    old_sha = record.inputs["controlnet checkpoint"].sha256
    ckpt.write_text("weights v2")
    now = Provenance(
        settings={"spacing": [1.5, 1.5, 4.0], "sampler": "ddim", "aug": {"degrees": 5.0, "flip": [0]}, "eta": 0.0},
        inputs={"controlnet checkpoint": FileRecord.of("runs/x/controlnet/fold0/checkpoints/best.ckpt")},
    )
    found = differences(read_provenance(path, "x"), now)
    new_sha = now.inputs["controlnet checkpoint"].sha256
    assert found == [
        "setting spacing: [1.0, 1.0, 2.0] (stored) -> [1.5, 1.5, 4.0] (now)",
        "setting aug.degrees: 10.0 (stored) -> 5.0 (now)",
        "setting eta: <missing> (stored) -> 0.0 (now)",
        f"input controlnet checkpoint runs/x/controlnet/fold0/checkpoints/best.ckpt changed "
        f"(sha256 {old_sha[:12]}… -> {new_sha[:12]}…)",
    ]
    with pytest.raises(OutOfDateError) as info:
        check_current(path, now, "the synthetic patch folder of fold 0", output=tmp_path / "out")
    assert isinstance(info.value, NeonetError)
    assert str(info.value) == (
        "the synthetic patch folder of fold 0 at out was made from other settings or inputs than this command's: "
        + "; ".join(found)
        + ".\nRe-run with --force to replace it (or write to another --experiment)."
    )
    # the defaults of records written before a key existed; an input that moved with the same content is the same
    ckpt.write_text("weights v1")
    moved = _file(tmp_path / "elsewhere.ckpt", "weights v1")
    now = Provenance(
        settings={**record.settings, "eta": 0.0},
        inputs={"controlnet checkpoint": FileRecord.of(moved), "patch manifest": FileRecord("p.csv", "0" * 64)},
    )
    assert differences(record, now, {"eta": 0.0, "patch manifest": UNRECORDED}) == []
    assert differences(record, now, {"eta": 1.0}) == [
        "setting eta: 1.0 (stored) -> 0.0 (now)",
        "input patch manifest p.csv is new",
    ]
    assert differences(now, record, {"eta": UNRECORDED}) == [
        "setting eta: 0.0 (stored) -> <missing> (now)",
        "input patch manifest p.csv is no longer used",
    ]
    assert differences(record, now, only=("spacing",)) == ["input patch manifest p.csv is new"]


def test_an_altered_output_is_a_difference(tmp_path: Path) -> None:
    cache = _file(tmp_path / "cache.pt", "latents")
    stored = Provenance(outputs={"latent cache": FileRecord.of(cache)})
    assert differences(stored, Provenance(outputs={"latent cache": FileRecord.of(cache)})) == []
    assert differences(stored, Provenance()) == []  # a reader that does not look at the output
    cache.write_text("latents, half")
    [line] = differences(stored, Provenance(outputs={"latent cache": FileRecord.of(cache)}))
    assert line.startswith(f"output latent cache {cache} changed after it was recorded (sha256 ")


@pytest.mark.parametrize(
    "text",
    [
        '{"provenance": 1, "settings": {"a"',
        "",
        "[1, 2]",
        '{"provenance": 1, "inputs": {"ckpt": {"path": "x"}}}',
        '{"provenance": 7}',
    ],
)
def test_an_unreadable_record_is_a_named_error_with_the_remedy(tmp_path: Path, text: str) -> None:
    path = _file(tmp_path / "crop_config.json", text)
    with pytest.raises(UnreadableRecordError) as info:
        read_provenance(path, "the TLCR patch folder")
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable record of the TLCR patch folder (")
    assert "Re-run with --force to replace it" in message
    with pytest.raises(UnreadableRecordError, match=r"(?s)Re-run with --force.*\n    make it --force true"):
        check_current(path, Provenance(), "x", command="make it --force true")


def test_an_old_format_record_is_read_through_its_converter(tmp_path: Path) -> None:
    path = _file(tmp_path / "old.json", json.dumps({"source": "manual", "spacing": [1.0, 1.0, 2.0], "cases": "c.csv"}))

    def legacy(data: dict) -> Provenance:
        return Provenance(settings={k: data[k] for k in ("source", "spacing") if k in data}, extra={"cases": data["cases"]})

    now = Provenance(settings={"source": "manual", "spacing": [1.0, 1.0, 2.0], "shell_region": "all"})
    stored = check_current(path, now, "x", legacy=legacy, defaults={"shell_region": "all"})
    assert stored is not None and stored.extra == {"cases": "c.csv"}
    with pytest.raises(OutOfDateError, match=r"setting shell_region: 'all' \(stored\) -> 'liver' \(now\)"):
        check_current(
            path,
            Provenance(settings={**now.settings, "shell_region": "liver"}),
            "x",
            legacy=legacy,
            defaults={"shell_region": "all"},
        )
    with pytest.raises(UnreadableRecordError, match="record format None"):
        read_provenance(path, "x")  # without a converter an old record is not guessed at


def test_several_outputs_share_one_remedy_and_a_verb_appends_its_way_on() -> None:
    first = Outdated("pattennet fold 1", "/r/pattennet/fold1/config.yaml", ["setting seed: 3 (stored) -> 0 (now)"])
    error = OutOfDateError(
        first,
        Outdated("pattennet fold 2", "/r/pattennet/fold2/config.yaml", ["setting a: 1 (stored) -> 2 (now)"]),
        way_on="Or train beside them: `-- --model.stage=pattennet_v2`.",
        experiment_option="`-- --data.experiment`",
    )
    assert str(error).splitlines() == [
        "pattennet fold 1 at /r/pattennet/fold1/config.yaml was made from other settings or inputs than this command's: "
        "setting seed: 3 (stored) -> 0 (now).",
        "pattennet fold 2 at /r/pattennet/fold2/config.yaml was made from other settings or inputs than this command's: "
        "setting a: 1 (stored) -> 2 (now).",
        "Re-run with --force to replace them (or write to another `-- --data.experiment`).",
        "Or train beside them: `-- --model.stage=pattennet_v2`.",
    ]


def test_latent_cache_consumer_end_to_end(tmp_path: Path) -> None:
    """A stage reading a latent cache: an old-format record is accepted; a retrained autoencoder is the one error."""
    from fit_probes import write_latent_fixture
    from neonet.gen.latents import load_latent_cache
    from neonet.workspace import Workspace

    write_latent_fixture(tmp_path, "toy", folds=(0,))  # writes cache.json as neonet did before neonet.run.provenance
    ws = Workspace(tmp_path / "runs", "toy")
    meta, cache = load_latent_cache(ws, 0)
    assert meta["settings"] == {"fabricated": True} and meta["latent_shape"] == [3, 8, 8, 4]
    ckpt = ws.best_checkpoint("autoencoder", 0)
    assert meta["autoencoder_checkpoint"]["path"] == str(ckpt)
    ckpt.write_bytes(b"a retrained autoencoder\n")
    with pytest.raises(OutOfDateError) as info:
        load_latent_cache(ws, 0)
    message = str(info.value)
    assert message.startswith(
        f"the latent cache of fold 0 at {ws.latents_dir(0)} was made from other settings or inputs "
        f"than this command's: input autoencoder checkpoint {ckpt} changed (sha256 "
    )
    assert message.endswith(
        "Re-run with --force to replace it (or write to another --experiment):\n"
        f"    python -m neonet.gen.latents --experiment toy --runs_dir {ws.runs_dir} --folds 0 --force true"
    )
