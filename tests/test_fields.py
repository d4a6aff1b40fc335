"""The fields table is the one statement of what each special field and setting may hold."""
from __future__ import annotations

import pytest

from batchy.errors import InvalidConfig
from batchy.rules import fields, windows, workflows

CHECKED = [f for f in fields.FIELDS if f.check is not None]


@pytest.mark.parametrize("field", [f for f in CHECKED if f.scope in (fields.JOB, fields.BOTH)], ids=lambda f: f.name)
def test_a_job_field_is_checked_by_its_row(field):
    with pytest.raises(InvalidConfig) as caught:
        workflows.parse_config("wf", f"a:\n  {field.name}: nonsense\n")
    assert field.name in caught.value.message and "nonsense" in caught.value.message


@pytest.mark.parametrize("field", [f for f in CHECKED if f.scope in (fields.WORKFLOW, fields.BOTH)],
                         ids=lambda f: f.name)
def test_a_workflow_setting_is_checked_by_its_row(field):
    with pytest.raises(InvalidConfig) as caught:
        workflows.parse_config("wf", f".batchy:\n  {field.name}: nonsense\na:\n")
    assert f"{field.name} in wf.yaml must" in caught.value.message


def test_a_runtime_field_cannot_be_a_setting():
    with pytest.raises(InvalidConfig, match="unknown workflow setting 'batch_id'"):
        workflows.parse_config("wf", ".batchy:\n  batch_id: 3\na:\n")


def test_defaults_fill_a_bare_job():
    config = workflows.parse_config("wf", "a:\n")
    assert {k: config.jobs["a"][k] for k in fields.DEFAULTS} == fields.DEFAULTS


def test_the_policy_rows_are_the_policy():
    assert tuple(f for f in fields.JOB_SETTINGS if f in windows.POLICY_FIELDS) == windows.POLICY_FIELDS


@pytest.mark.parametrize("name, good, bad", [
    ("reprocess_hours", 0, -1), ("max_window_hours", 0.5, 0), ("settle_minutes", 0, -0.1),
    ("max_age_hours", 24, float("inf")), ("lease_hours", 6, True),
])
def test_one_amount_rule_for_every_number_of_hours(name, good, bad):
    assert fields.check(name, good) == good
    with pytest.raises(ValueError, match=name):
        fields.check(name, bad)
    with pytest.raises(ValueError, match=name):
        fields.check(name, fields.MAX_HOURS * (60 if name == "settle_minutes" else 1) + 1)
