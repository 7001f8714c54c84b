"""What people read: help grouped by task with no type noise, completion for the shell,
attribute mistakes named with the likely meant one, times exact both ways."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from twinledger.core.attributes import BadAttribute, owner_attributes
from twinledger.core.text import plural
from twinledger.core.times import iso_us, parse_time


def twinledger(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "twinledger", *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_is_grouped_by_task_and_free_of_type_noise():
    shown = twinledger("--help").stdout
    panels = ["Start here", "Twins and their data", "Sharing", "The consortium and its people", "Checking"]
    assert [shown.index(p) for p in panels] == sorted(shown.index(p) for p in panels)
    assert shown.index("demo") < shown.index("grant"), "the demo first, not in the middle"
    command = twinledger("twin", "doc", "add", "--help").stdout
    assert "Usage: twinledger twin doc add [OPTIONS] TWIN FILE" in command
    assert "<bool>" not in command and "{ref}" not in command and "(M3)" not in twinledger("device", "--help").stdout
    assert "every encrypted chunk and to the data key" in command.replace("\n", " ").replace("  ", " "), "reflowed"


def test_shell_completion_is_offered():
    """What --install-completion installs for bash, and what it then answers (the shell is
    named, not detected: a test has no login shell to detect)."""

    def completion(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "twinledger"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})  # fmt: skip

    script = completion(_TWINLEDGER_COMPLETE="source_bash")
    assert script.returncode == 0 and "_twinledger_completion" in script.stdout and "complete -o" in script.stdout
    answer = completion(_TWINLEDGER_COMPLETE="complete_bash", COMP_WORDS="twinledger twi", COMP_CWORD="1")
    assert answer.returncode == 0 and answer.stdout.split() == ["twin"]
    assert "--install-completion" in twinledger("--help").stdout


@pytest.mark.parametrize(("given", "said"), [
    ("type=quality", "did you mean 'type:quality'?"),
    ("typ:quality", "did you mean 'type:quality'?"),
    ("typereport", "did you mean 'type:report'?"),
    ("Type: report", "did you mean 'type:report'?"),
    ("quality", "is not KEY:VALUE (a lower-case key, a colon, a value without spaces: type:report)"),
    ("batch:", "has no value after its colon"),
    ("tpye:report", "did you mean 'type:report'?"),
])  # fmt: skip
def test_an_attribute_mistake_names_the_meant_one(given, said):
    with pytest.raises(BadAttribute) as caught:
        owner_attributes([given])
    assert said in caught.value.message


def test_attributes_people_use_pass():
    legitimate = ["type:report", "line:7", "shift:night", "batch-id:2026/11", "url:https://plant.example/a:b", "lot:Ä-12",
                  "size:large", "lane:3", "patch:2", "lines:2", "kind2:x", "iso.class:9001"]  # words, not slips
    assert owner_attributes(legitimate) == legitimate


def test_times_are_exact_to_the_microsecond_both_ways():
    rng = random.Random(3)
    for _ in range(2000):
        moment = rng.randrange(0, 1 << 33) * 1_000_000 + rng.randrange(1_000_000)
        assert parse_time(iso_us(moment)) == moment
    assert parse_time("2026-12-07T20:00:00") == parse_time("2026-12-07T20:00:00+00:00"), "UTC when no zone"
    assert parse_time("2026-12-07T21:00:00+01:00") == parse_time("2026-12-07T20:00:00Z")


def test_counts_read_as_words():
    assert (plural(1, "bottle"), plural(2000, "sample"), plural(0, "entry", "entries")) == \
        ("1 bottle", "2,000 samples", "0 entries")  # fmt: skip


@pytest.mark.parametrize(("args", "said"), [
    (("twin", "feed", "push", "line-7", "level-1", "f.csv", "--home", "/nonexistent", "--segment-seconds", "0"),
     "error: invalid value for '--segment-seconds': Input should be greater than or equal to 0.001 "
     "(see twinledger twin feed push --help)"),
    (("twin", "doc", "add"), "error: missing argument 'TWIN' (see twinledger twin doc add --help)"),
    (("nosuch",), "error: no such command 'nosuch' (see twinledger --help)"),
    (("network", "up", "--base-port", "abc"), "error: invalid value for '--base-port'"),
])  # fmt: skip
def test_a_command_line_that_does_not_parse_gets_one_line_and_exit_2(args, said):
    done = twinledger(*args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith(said), done.stderr


def test_exit_codes_pass_through():
    assert twinledger("twin", "list", "--home", "/nonexistent").returncode == 1
    assert twinledger("--version").returncode == 0 and twinledger("twin").returncode == 0


def test_stdin_needs_the_name_a_file_would_have_given():
    """``-`` reads stdin for doc add, doc version, twin create and record put; a name that
    came from the file name must then be given."""
    done = subprocess.run([sys.executable, "-m", "twinledger", "twin", "doc", "add", "line-7", "-", "--home", "/nowhere"],
                          input="report\n", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and done.stderr == "error: data from stdin (-) has no file name: give --title\n"
    missing = twinledger("twin", "doc", "add", "line-7", "/nonexistent/report.pdf", "--home", "/nowhere")
    assert missing.returncode == 1 and missing.stderr == "error: no file /nonexistent/report.pdf\n"

