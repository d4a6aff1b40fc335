"""Workflow files: parsing, validation of the special fields, reload merging."""
import pytest

from batchy import workflows
from batchy.errors import ConfigNotFound, InvalidConfig, InvalidName


def parse(text):
    return workflows.parse_config("wf", text)


def test_bare_param_file_gets_every_special_field():
    cfg = parse("job_a:\njob_b:\n  src: CRM\n")
    assert list(cfg.jobs) == ["job_a", "job_b"]
    a = cfg.jobs["job_a"]
    assert a["status"] == "new" and a["batch_id"] is None and a["from_date"] is None
    assert a["reprocess_hours"] == 0 and a["trunc_start"] is False and a["timezone"] == "UTC"
    assert cfg.jobs["job_b"]["src"] == "CRM"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-01-01", "2024-01-01T00:00:00+00:00"),
        ("'2024-01-01'", "2024-01-01T00:00:00+00:00"),
        ("2024-01-01 10:00:00", "2024-01-01T10:00:00+00:00"),
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00+00:00"),
        ("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00+00:00"),
        ('"2024-01-01T10:00:00-05:00"', "2024-01-01T15:00:00+00:00"),
        ("2024-01-01t10:00:00", "2024-01-01T10:00:00+00:00"),
    ],
)
def test_dates_in_every_form_a_yaml_author_writes(value, expected):
    assert parse(f"j:\n  from_date: {value}\n").jobs["j"]["from_date"] == expected


def test_workflow_settings_live_under_the_dot_batchy_key():
    cfg = parse(".batchy:\n  exclusive: true\n  lease_hours: 6\nj:\n")
    assert cfg.settings == {"exclusive": True, "lease_hours": 6}
    assert list(cfg.jobs) == ["j"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("j: [1, 2]\n", "must map parameter names"),
        ("j:\n  reprocess_hours: -1\n", "reprocess_hours"),
        ("j:\n  reprocess_hours: two\n", "reprocess_hours"),
        ("j:\n  reprocess_hours: .nan\n", "reprocess_hours"),
        ("j:\n  reprocess_hours: 1e12\n", "reprocess_hours"),
        ("j:\n  trunc_start: maybe\n", "trunc_start"),
        ("j:\n  timezone: Mars/Olympus\n", "unknown time zone"),
        ("j:\n  from_date: yesterday\n", "from_date"),
        ("j:\n  from_date: 12\n", "from_date"),
        ("j:\n  status: running\n", "status"),
        ("j:\n  batch_id: -3\n", "batch_id"),
        ("j:\n  infa_section: \"a]\\n[b\"\n", "infa_section"),
        ("j:\n  x: !!binary aGVsbG8=\n", "cannot be stored"),
        ("j: {a: 1\n", "not valid YAML"),
        ("bad name!:\n", "invalid job name"),
        (".batchy:\n  colour: red\nj:\n", "unknown workflow setting"),
        (".batchy:\n  lease_hours: 0\nj:\n", "lease_hours"),
        (".batchy:\n  exclusive: 1\nj:\n", "exclusive"),
        (".batchy:\n  exclusive: true\n", "no job"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(text, fragment):
    with pytest.raises((InvalidConfig, InvalidName)) as err:
        parse(text)
    assert fragment in err.value.message


def test_malformed_yaml_says_where():
    with pytest.raises(InvalidConfig) as err:
        parse("j:\n  a: 1\n   b: 2\n")
    assert "line 3" in err.value.message


def test_alias_bomb_is_refused_before_expanding():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)
    )
    with pytest.raises(InvalidConfig) as err:
        parse(bomb)
    assert "aliases" in err.value.message


def test_deep_nesting_is_refused():
    with pytest.raises(InvalidConfig) as err:
        parse("j:\n  x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nest" in err.value.message


def test_read_config_caps_the_size_and_finds_yml(tmp_path):
    (tmp_path / "big.yaml").write_text("j:\n  x: " + "a" * 2000 + "\n")
    with pytest.raises(InvalidConfig):
        workflows.read_config(str(tmp_path), "big", 1000)
    (tmp_path / "other.yml").write_text("j:\n")
    assert list(workflows.read_config(str(tmp_path), "other", 1000).jobs) == ["j"]
    with pytest.raises(ConfigNotFound):
        workflows.read_config(str(tmp_path), "missing", 1000)
    with pytest.raises(InvalidName):
        workflows.read_config(str(tmp_path), "../etc/passwd", 1000)


def test_reload_keeps_runtime_state_replaces_params_drops_and_adds_jobs():
    existing = {
        "keep": {"status": "success", "batch_id": 5, "from_date": "2024-01-02T00:00:00+00:00",
                 "to_date": "2024-01-03T00:00:00+00:00", "batch_start": "2024-01-03T00:00:00+00:00",
                 "batch_end": "2024-01-03T01:00:00+00:00", "records_processed": 9, "message": None,
                 "src": "old", "reprocess_hours": 1},
        "fresh": {"status": "new", "from_date": "2020-01-01T00:00:00+00:00", "src": "x"},
        "gone": {"status": "success"},
    }
    cfg = parse("keep:\n  src: new\n  reprocess_hours: 3\n  from_date: 1999-01-01\n"
                "fresh:\n  from_date: 2023-06-01\nadded:\n")
    merged = workflows.merge(existing, cfg.jobs)
    assert list(merged) == ["keep", "fresh", "added"]
    keep = merged["keep"]
    assert keep["from_date"] == "2024-01-02T00:00:00+00:00"  # the watermark survives the redeploy
    assert keep["status"] == "success" and keep["batch_id"] == 5 and keep["records_processed"] == 9
    assert keep["src"] == "new" and keep["reprocess_hours"] == 3  # params come from the file
    # a job that never ran takes the file's from_date
    assert merged["fresh"]["from_date"] == "2023-06-01T00:00:00+00:00" and "src" not in merged["fresh"]
    assert merged["added"]["status"] == "new"
