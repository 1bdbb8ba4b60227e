"""store/handover_codec.py: a hand-over's bytes, and which store may apply them: this one, a newer version, or a
store of another schema sharing the directory."""

from __future__ import annotations

import json

import pytest

from fraisier_textfile import catalogue as c
from fraisier_textfile.catalogue import SCHEMA
from fraisier_textfile.changes import Changes
from fraisier_textfile.format.schema import Family, Kind, Schema
from fraisier_textfile.store.handover_codec import (
    FIRST_FORMAT,
    FIRST_FORMAT_SCHEMA,
    FORMAT_VERSION,
    ForeignHandover,
    NewerHandover,
    UnreadableHandover,
    decode,
    encode,
)

from .test_handovers import as_plain, every_kind_of_change

JOBS = Family("app_jobs_total", Kind.COUNTER, ("kind",), "Jobs run.")
APPLICATION = Schema([JOBS])


def application_changes() -> Changes:
    changes = Changes()
    changes.add(JOBS, ("backup",), 2)
    return changes


def test_a_hand_over_reads_back_as_it_was_written() -> None:
    changes = every_kind_of_change()
    assert as_plain(decode(encode(changes, SCHEMA), SCHEMA)) == as_plain(changes)
    assert as_plain(decode(encode(application_changes(), APPLICATION), APPLICATION)) == as_plain(
        application_changes())


def test_another_schemas_hand_over_is_left_for_it_not_set_aside() -> None:
    with pytest.raises(ForeignHandover, match="another schema"):
        decode(encode(application_changes(), APPLICATION), SCHEMA)
    with pytest.raises(ForeignHandover):
        decode(encode(every_kind_of_change(), SCHEMA), APPLICATION)


def test_another_catalogues_hand_over_is_applied_when_this_one_has_its_families() -> None:
    """An upgrade: the other version's catalogue has another fingerprint, and the same families."""
    content = json.loads(encode(every_kind_of_change(), SCHEMA))
    content["schema"] = "0123abcd"
    assert as_plain(decode(json.dumps(content).encode(), SCHEMA)) == as_plain(every_kind_of_change())


def test_a_family_unknown_to_the_very_schema_that_wrote_it_is_unreadable_not_foreign() -> None:
    """Only a hand-over naming another schema is left: a hand-made one under ours is set aside as ever."""
    content = json.loads(encode(every_kind_of_change(), SCHEMA))
    content["added"].append(["made_up_total", ["x"], 1])
    with pytest.raises(UnreadableHandover) as refused:
        decode(json.dumps(content).encode(), SCHEMA)
    assert not isinstance(refused.value, ForeignHandover)
    del content["schema"]  # a hand-over of the version before: read as it was
    with pytest.raises(UnreadableHandover) as refused:
        decode(json.dumps(content).encode(), SCHEMA)
    assert not isinstance(refused.value, ForeignHandover)


def test_a_newer_format_is_left_for_its_version() -> None:
    content = json.loads(encode(every_kind_of_change(), SCHEMA))
    content["version"] = FORMAT_VERSION + 1
    with pytest.raises(NewerHandover):
        decode(json.dumps(content).encode(), SCHEMA)


@pytest.mark.parametrize("value", ["10" * 200, "1e400", "-1", "NaN", "true", '"1"', "[[[[[[[[1]]]]]]]]"])
def test_a_value_no_recorder_writes_is_unreadable_never_another_error(value: str) -> None:
    data = (f'{{"version":1,"schema":"{c.SCHEMA.fingerprint}","added":[["{c.DEPLOYMENT_ERRORS.name}",'
            f'["bare_metal","x"],{value}]],"observed":[],"latest":[],"maximum":[],"active_providers":[],'
            '"retired_markers":[]}').encode()
    with pytest.raises(UnreadableHandover):
        decode(data, SCHEMA)


def test_a_hand_over_without_a_fingerprint_is_of_the_schema_the_first_format_knew() -> None:
    """0.2.0 wrote no fingerprint: its hand-overs are of the one schema it had, Fraisier's catalogue as released
    (which this catalogue still is). A store of another schema leaves them for a store of that one."""
    assert SCHEMA.fingerprint == FIRST_FORMAT_SCHEMA
    content = json.loads(encode(every_kind_of_change(), SCHEMA))
    del content["schema"]
    released = json.dumps(content).encode()
    assert as_plain(decode(released, SCHEMA)) == as_plain(every_kind_of_change())
    with pytest.raises(ForeignHandover):
        decode(released, APPLICATION)


def test_the_hand_overs_of_fraisier_s_schema_are_of_the_first_format_those_of_another_of_the_second() -> None:
    """0.2.0 reads the first format only, against Fraisier's catalogue, and leaves one of a newer format in place:
    Fraisier's hand-overs stay of the first (0.2.0 applies them after a downgrade), another schema's are of the
    second (0.2.0 would set them aside as naming a family it does not have). This version reads both."""
    assert json.loads(encode(every_kind_of_change(), SCHEMA))["version"] == FIRST_FORMAT
    theirs = encode(application_changes(), APPLICATION)
    assert json.loads(theirs)["version"] == FORMAT_VERSION > FIRST_FORMAT
    assert as_plain(decode(theirs, APPLICATION)) == as_plain(application_changes())


def test_a_hand_over_carries_its_id_first_and_one_holding_anothers_is_stale() -> None:
    """The id comes first, where a writer taking back a spent file looks for it (handover_reuse.header), and a
    merge refuses a file whose id is not its name's: the bytes of another hand-over, applied already."""
    from fraisier_textfile.store import handover_reuse
    from fraisier_textfile.store.handover_codec import StaleHandover

    data = encode(every_kind_of_change(), SCHEMA, "s1-2-ab")
    assert data.startswith(handover_reuse.header("s1-2-ab"))
    assert as_plain(decode(data, SCHEMA, "s1-2-ab")) == as_plain(every_kind_of_change())
    with pytest.raises(StaleHandover, match="'s1-2-ab'"):
        decode(data, SCHEMA, "s3-2-cd")
    without = encode(every_kind_of_change(), SCHEMA)  # as 0.2.0 and the versions before this one wrote them
    assert b'"id"' not in without
    assert as_plain(decode(without, SCHEMA, "s3-2-cd")) == as_plain(every_kind_of_change())


def test_a_hand_over_whose_bytes_do_not_match_its_checksum_is_unreadable() -> None:
    """A hand-over written over a spent one and torn by a power loss (some sectors new, some old) can still be
    JSON with its own id, and then hold another hand-over's events: its checksum, last, tells."""
    data = encode(every_kind_of_change(), SCHEMA, "s1-2-ab")
    assert as_plain(decode(data, SCHEMA, "s1-2-ab")) == as_plain(every_kind_of_change())
    count = data.index(b"42.0")  # the deployment's duration: still valid JSON when changed
    changed = data[:count] + b"43.0" + data[count + 4 :]
    json.loads(changed)
    with pytest.raises(UnreadableHandover, match="checksum"):
        decode(changed, SCHEMA, "s1-2-ab")
